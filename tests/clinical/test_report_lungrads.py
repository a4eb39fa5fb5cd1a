"""The report's readout section: one row per sampled method beside the baseline's copy and the
real follow-up, scored on the test pairs, with the readout's notice."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import write_tiny_cohort

from namd.clinical import READOUT_NOTICE
from namd.clinical.rows import score_rows
from namd.cohort.store import Cohort
from namd.config import load_config, methods
from namd.config.readout import ReadoutConfig
from namd.evaluation.report.inputs import Context, MissingInput
from namd.evaluation.report.lungrads import lungrads_html, section_lungrads
from namd.run.layout import RunDir


def test_section_has_a_row_per_sampled_method_and_the_references(tmp_path):
    run = RunDir(tmp_path / "run")
    write_tiny_cohort(run.stage("cohort"))
    ctx = Context(run, load_config("tiny"))
    with pytest.raises(MissingInput):  # namd evaluate scores the readout; the report renders it
        section_lungrads(ctx)
    cohort = Cohort(run.stage("cohort"))
    pairs = cohort.pairs("test")
    crops = cohort.images(pairs["followup_index"].to_numpy())
    cfg = ReadoutConfig()
    scores = score_rows(cohort, pairs, {methods.REFERENCE: np.repeat(crops[:, None], 3, axis=1)}, cfg)
    block = {"status": "ok", "n": len(pairs), "version": cfg.version, "draws": cfg.draws, "rows": scores}
    body = lungrads_html(block, ctx)  # a perfect generator
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td class=num>(\d+)</td>", body)
    assert len(rows) == 3 and "copy of the baseline" in rows[0][0]
    assert rows[1][0].endswith(f">{methods.REFERENCE}</span>") and "real follow-up" in rows[2][0]
    assert [k for _, k in rows] == ["1", "3", "1"]  # K
    scores = ctx.facts["lungrads"]
    assert scores[methods.REFERENCE]["n"] == scores["real_followup"]["n"] == 2
    assert READOUT_NOTICE.split(" Sizes")[0] in body and "2 test pairs" in body
    assert "reliability of P(growth &gt; 1.5 mm)" in body and " → " in body


def test_the_block_reuses_what_evaluate_measured(tmp_path, monkeypatch):
    """namd evaluate hands over the crops it measured once: the same scores, no second
    measurement, and measurements of another shape are refused."""
    import json

    import namd.clinical.rows as R
    from namd.evaluation.measure import measure

    write_tiny_cohort(tmp_path / "cohort")
    cohort = Cohort(tmp_path / "cohort")
    pairs = cohort.pairs("test")
    base, follow = (cohort.images(pairs[f"{k}_index"].to_numpy())[:, None] for k in ("baseline", "followup"))
    rows = {methods.REFERENCE: np.concatenate([base, follow, follow], axis=1)}
    cfg = ReadoutConfig()
    fresh = score_rows(cohort, pairs, rows, cfg)
    measured = {"copy_baseline": measure(base, 1.0), "real_followup": measure(follow, 1.0),
                methods.REFERENCE: measure(rows[methods.REFERENCE], 1.0)}

    def no_second_measurement(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(R, "measure", no_second_measurement)
    block = R.readout_block(cohort, pairs, rows, measured, "not available: test", cfg)
    assert block["n"] == len(pairs) and R.KNOWN_FUTURES not in block["rows"]
    assert json.dumps(block["rows"], sort_keys=True) == json.dumps(fresh, sort_keys=True)
    measured["real_followup"] = measured[methods.REFERENCE]
    with pytest.raises(ValueError, match="readout: the measurements of real_followup are"):
        R.readout_block(cohort, pairs, rows, measured, "not available: test", cfg)


def test_the_block_reuses_the_measured_futures(tmp_path, monkeypatch):
    """The known futures' row reads the futures evaluate measured once (the first `reference`
    of each nodule's), with the scores of measuring them here."""
    import json
    from types import SimpleNamespace

    import namd.clinical.rows as R
    from namd.evaluation.measure import measure

    write_tiny_cohort(tmp_path / "cohort")
    cohort = Cohort(tmp_path / "cohort")
    pairs = cohort.pairs("test")
    base, follow = (cohort.images(pairs[f"{k}_index"].to_numpy())[:, None] for k in ("baseline", "followup"))
    all_futures = np.concatenate([follow, base, follow], axis=1)  # 2 reference futures, 1 held out
    known = SimpleNamespace(pair_ids=pairs["pair_id"].astype(str).tolist(), reference=2,
                            of=lambda ids: all_futures)
    rows = {methods.REFERENCE: np.concatenate([base, follow], axis=1)}
    cfg = ReadoutConfig()
    fresh = score_rows(cohort, pairs, rows, cfg, all_futures[:, :2])
    measured = {"copy_baseline": measure(base, 1.0), "real_followup": measure(follow, 1.0),
                methods.REFERENCE: measure(rows[methods.REFERENCE], 1.0)}
    futures_m = measure(all_futures, 1.0)
    monkeypatch.setattr(R, "measure", lambda *a, **k: pytest.fail("measured again"))
    block = R.readout_block(cohort, pairs, rows, measured, known, cfg, futures_m)
    assert R.KNOWN_FUTURES in block["rows"]
    assert json.dumps(block["rows"][R.KNOWN_FUTURES], sort_keys=True) == json.dumps(fresh[R.KNOWN_FUTURES], sort_keys=True)
