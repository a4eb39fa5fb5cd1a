"""The report's readout section: one row per sampled method beside the baseline's copy and the
real follow-up, scored on the test pairs, with the readout's notice."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import write_tiny_cohort

from namd.clinical import READOUT_NOTICE
from namd.cohort.store import Cohort
from namd.config import load_config, methods
from namd.evaluation.report.inputs import Context, MissingInput
from namd.evaluation.report.lungrads import section_lungrads
from namd.run.layout import RunDir


def test_section_has_a_row_per_sampled_method_and_the_references(tmp_path):
    run = RunDir(tmp_path / "run")
    write_tiny_cohort(run.stage("cohort"))
    ctx = Context(run, load_config("tiny"))
    with pytest.raises(MissingInput):
        section_lungrads(ctx)
    pairs = Cohort(run.stage("cohort")).pairs("test")
    folder = run.stage(methods.get(methods.REFERENCE).samples)
    folder.mkdir(parents=True)
    crops = Cohort(run.stage("cohort")).images(pairs["followup_index"].to_numpy())
    np.save(folder / "samples.npy", np.repeat(crops[:, None], 3, axis=1))  # a perfect generator
    pairs[["pair_id", "patient_id", "baseline_index", "followup_index", "label"]].to_csv(
        folder / "index.csv", index=False)
    body = section_lungrads(ctx)
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td class=num>(\d+)</td>", body)
    assert len(rows) == 3 and "copy of the baseline" in rows[0][0]
    assert rows[1][0].endswith(f">{methods.REFERENCE}</span>") and "real follow-up" in rows[2][0]
    assert [k for _, k in rows] == ["1", "3", "1"]  # K
    scores = ctx.facts["lungrads"]
    assert scores[methods.REFERENCE]["n"] == scores["real_followup"]["n"] == 2
    assert READOUT_NOTICE.split(" Sizes")[0] in body and "2 test pairs" in body
    assert "reliability of P(growth &gt; 1.5 mm)" in body and " → " in body
