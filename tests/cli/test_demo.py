"""The whole method end to end on a very small synthetic cohort: `namd demo` with every
ablation, resumption, and `namd predict` on the finished run. Sizes are minimal: this checks
that the stages fit together and write their contracts, not how well they learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL

from namd.cli.commands.demo import demo_methods
from namd.cli.graph import plan
from namd.cli.main import main
from namd.cohort.store import Cohort
from namd.config import FOUNDATION
from namd.models.foundation import read_manifest
from namd.run.layout import RunDir


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["demo", "--out", str(out), "--jobs", "1", *SMALL]) == 0  # ablations by default
    return out


def test_demo_writes_every_stage_and_the_table(demo_run):
    run = RunDir(demo_run)
    for step in plan(run, demo_methods()):
        assert run.is_done(step.folder), step.folder
    metrics = json.loads((demo_run / "eval" / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert set(rows) == {"real_baseline", "real_followup", "namd", "no_align",
                         "null_context", "copy_baseline", "vae_copy_baseline", "brock",
                         "ehr_logistic", "baseline_plus_ehr"}
    assert rows["vae_copy_baseline"]["status"] == "ok"
    for name in ("namd", "no_align", "null_context"):
        assert rows[name]["status"] == "ok" and rows[name]["k"] == 2
        assert "p_value" in rows[name]["vs_vae_copy_baseline"]
        # every variant's cond stage measured what its baseline buys; evaluate collected it
        assert 0 < metrics["baseline_use"][name]["ratio"] and len(metrics["baseline_use"][name]["bands"]) == 4
        assert 0 <= metrics["fidelity"][name]["nearest_own_followup_share"] <= 1
        assert metrics["growth"]["generated"][name]["status"] == "ok"  # the growth evidence
    html = (demo_run / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html and "no_align" in html
    samples = np.load(demo_run / "samples" / "samples.npy", mmap_mode="r")
    n_test = len(Cohort(demo_run / "cohort").pairs("test"))
    assert samples.shape == (n_test, 2, 64, 64) and np.isfinite(samples).all()
    # the CPU preset fine-tunes the shipped foundation, and each stage says which files it started from
    shipped = read_manifest()["files"]
    for stage in ("vae", "vae_no_align", "prior"):
        start = json.loads((demo_run / stage / "run_info.json").read_text())["foundation"]
        assert start["name"] == FOUNDATION and start["files"] == {k: v["sha256"] for k, v in shipped.items()}


def test_demo_resumes_by_skipping_finished_stages(demo_run, capsys):
    before = (demo_run / "vae" / "run_info.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo_run), "--jobs", "1"]) == 0
    assert (demo_run / "vae" / "run_info.json").stat().st_mtime_ns == before
    record = json.loads((demo_run / "pipeline.json").read_text())  # this run: every stage skipped
    assert record["jobs"] == 1 and record["methods"] == list(demo_methods()) and set(record["stage_seconds"].values()) == {0.0}
    assert "report:" in capsys.readouterr().out


def test_predict_one_new_patient(demo_run, tmp_path, capsys):
    cohort = Cohort(demo_run / "cohort")
    row = cohort.pairs("test").iloc[0]
    np.save(tmp_path / "crop.npy", cohort.images([int(row["baseline_index"])])[0])
    ehr = {k: (None if v != v else float(v)) for k, v in Cohort.ehr(row).as_dict().items()
           if v is not None}
    (tmp_path / "ehr.json").write_text(json.dumps(ehr))
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(demo_run), "--ehr", str(tmp_path / "ehr.json"),
                 "--crop", str(tmp_path / "crop.npy"), "--k", "3", "--out", str(out)]) == 0
    result = json.loads((out / "prediction.json").read_text())
    assert result["k"] == 3 and len(result["p_followup"]) == 3
    assert 0.0 <= result["p_followup_mean"] <= 1.0
    assert np.load(out / "samples.npy").shape == (3, 64, 64)
    assert "Lung cancer screening" in capsys.readouterr().out


def test_demo_refuses_a_change_its_stages_would_ignore(demo_run, capsys):
    """A --set on an existing run differs from RUN/config.yaml, which every stage reads: refused
    in one line naming the field, and nothing of the run is touched."""
    saved = (demo_run / "config.yaml").read_bytes()
    assert main(["demo", "--out", str(demo_run), "--jobs", "1", "--set", "sampling.steps_offset=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampling.steps_offset = 0, not 1" in err and "config.yaml" in err
    assert (demo_run / "config.yaml").read_bytes() == saved
