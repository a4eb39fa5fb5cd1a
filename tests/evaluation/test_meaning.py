"""Issue 27, goal 3: run files mean what they say. A calibration that inverts probabilities, an
index.csv whose rows no longer describe samples.npy's, metrics that lack what the tables state
or are older than the samples and weights they describe are refused in one line; rows sampled
with another K than the table's are flagged wherever the table is shown."""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from namd.cli.main import main
from namd.cohort.store import Cohort
from namd.config import load_config, methods
from namd.evaluation import evaluate
from namd.evaluation.report.build import build_report
from namd.evaluation.report.inputs import Context
from namd.evaluation.schema import SCHEMA_VERSION
from namd.evaluation.table_text import format_table, k_differs
from namd.inference.model_card import write_model_card
from namd.inference.sample_stage import write_sample_stage
from namd.inference.sampler import pairs_to_sample
from namd.models.calibration import (
    CALIBRATION_FILE,
    calibration_status,
    fit_platt,
    load_calibration,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir

CARD_DIRS = {"vae": "vae", "prior": "prior", "cond": "cond"}
CARD_FACTS = {"method": "namd", "model_sha256": "x", "namd_version": "0", "sampling": "ddim",
              "text": "structured", "probability": "raw"}


def copy_run(tiny_run, tmp_path) -> tuple[RunDir, object]:
    """A writable copy of the finished tiny run and its config."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, run.path)
    return run, load_config(base=run.saved_config())


def write_samples(run: RunDir, config, name: str, k: int) -> None:
    """A method's sample folder through the sample stage's writer: real follow-ups plus noise."""
    cohort = Cohort(run.stage("cohort"))
    pairs = pairs_to_sample(cohort, "test")
    follow = cohort.images(pairs["followup_index"])

    def fill(arr):
        arr[:] = follow[:, None] + np.random.default_rng(k).normal(0, 20, arr.shape)

    m = methods.get(name)
    write_sample_stage(config, run, m, cohort, pairs, k, fill, time.perf_counter(),
                       cond_dir=m.uses["cond"], vae_dir=m.uses["vae"])


def edit_json(path, **changes) -> None:
    """Rewrite some keys of a JSON file (None deletes the key)."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory) -> RunDir:
    """The tiny run with NAMD sampled at K = 1 and null_context at K = 3, evaluated."""
    run, config = copy_run(tiny_run, tmp_path_factory.mktemp("meaning"))
    write_samples(run, config, "namd", 1)
    write_samples(run, config, "null_context", 3)
    evaluate.evaluate_run(run, config)
    return run


# ---------------------------------------------------------------- calibration.json

@pytest.mark.parametrize("changes, message", [
    ({"slope": -5.0}, r"slope -5 is not positive: it would flatten or invert every probability"),
    ({"slope": 0.0}, r"slope 0 is not positive"),
    ({"method": "isotonic"}, r"method 'isotonic' is not one this namd implements \(platt, none\)"),
    ({"method": "none"}, r"status 'ok' with method 'none'"),
    ({"status": "fitted"}, r"status 'fitted' is neither 'ok' nor 'not fitted: <why>'"),
    ({"n_pos": 90}, r"n_pos 90 exceeds n"),
    ({"n": 2.5}, r"n must be a whole number >= 0, is 2.5"),
])
def test_calibration_that_means_something_else_is_refused(tmp_path, changes, message):
    rng = np.random.default_rng(0)
    y = (rng.random(80) < 0.3).astype(int)
    cal = fit_platt(np.clip(0.3 * y + rng.random(80) * 0.7, 0.01, 0.99), y)
    assert cal.fitted and cal.slope > 0
    cal.save(tmp_path / CALIBRATION_FILE)
    assert load_calibration(tmp_path) == cal
    edit_json(tmp_path / CALIBRATION_FILE, **changes)
    for read in (load_calibration, calibration_status):
        with pytest.raises(RunFileError, match=rf"calibration.json: {message}"):
            read(tmp_path)


def test_scores_ranked_backwards_fit_no_calibration(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.4).astype(int)
    p = np.clip(0.7 - 0.4 * y + rng.normal(0, 0.1, 200), 0.01, 0.99)  # malignant scored lower
    cal = fit_platt(p, y)
    assert not cal.fitted and cal.status.startswith("not fitted: the fitted slope is -")
    np.testing.assert_array_equal(cal.apply(p), p)
    cal.save(tmp_path / CALIBRATION_FILE)
    assert load_calibration(tmp_path) is None  # read back: nothing to apply, no error


def test_an_inverting_calibration_stops_evaluate_and_predict(tiny_run, tmp_path, capsys):
    run, _ = copy_run(tiny_run, tmp_path)
    path = run.stage("evaluator") / CALIBRATION_FILE
    path.write_text(json.dumps({"method": "platt", "slope": -5.0, "intercept": 0.1, "n": 8,
                                "n_pos": 4, "status": "ok", "note": ""}))
    assert main(["evaluate", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: slope -5 is not positive" in err
    assert "namd train evaluator" in err
    from namd import NAMDPipeline

    with pytest.raises(RunFileError, match="slope -5 is not positive"):
        NAMDPipeline.from_run(run.path)


# ---------------------------------------------------------------- samples*/index.csv

def test_index_rows_reordered_against_samples_npy_are_refused(tiny_run, tmp_path, capsys):
    run, config = copy_run(tiny_run, tmp_path)
    write_samples(run, config, "namd", 2)
    folder = run.stage("samples")
    info = json.loads((folder / "run_info.json").read_text())
    assert len(info["pair_order_sha256"]) == 64
    cohort = Cohort(run.stage("cohort"))
    pairs, _ = evaluate.test_pairs(cohort, "test")
    crops, status, _ = evaluate.load_samples(folder, pairs, "test", cohort.crop_size)
    assert status == "ok"
    index = pd.read_csv(folder / "index.csv", dtype=str)
    index.iloc[::-1].to_csv(folder / "index.csv", index=False)  # samples.npy left as it was
    message = r"index.csv: its rows are not in the order samples.npy was written in"
    with pytest.raises(RunFileError, match=message):
        evaluate.load_samples(folder, pairs, "test", cohort.crop_size)
    with pytest.raises(RunFileError, match=message):
        Context(run, config).samples("samples")
    assert main(["evaluate", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the order" in err and "namd sample --run" in err


def test_samples_older_than_their_retrained_weights_are_refused(evaluated, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(evaluated.path, run.path)
    edit_json(run.stage("cond") / "run_info.json", time_utc="2999-01-01T00:00:00Z")
    cohort = Cohort(run.stage("cohort"))
    pairs, _ = evaluate.test_pairs(cohort, "test")
    with pytest.raises(RunFileError, match=r"samples/run_info.json: the samples were made .* "
                                           r"before .*cond was trained again .* sample again: "
                                           r"`namd sample --run .* --split test --overwrite`"):
        evaluate.load_samples(run.stage("samples"), pairs, "test", cohort.crop_size)


# ---------------------------------------------------------------- metrics.json: fields

@pytest.mark.parametrize("metrics, message", [
    ({}, "lacks schema_version, rows"),
    ({"schema_version": SCHEMA_VERSION, "rows": []}, "lacks split, which the tables state"),
    ({"schema_version": SCHEMA_VERSION, "rows": [], "split": "test", "n_test": 0, "n_malignant": 0, "k": 2},
     "n_test is 0, not a valid value"),
    ({"schema_version": SCHEMA_VERSION, "rows": [{"name": "namd"}], "split": "test"},
     "rows[0] is not an object with a name and a status"),
])
def test_metrics_without_what_the_tables_state_are_refused(tmp_path, capsys, metrics, message):
    run = RunDir(tmp_path / "run")
    run.stage("eval").mkdir(parents=True)
    (run.stage("eval") / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"metrics.json: {message}" in err.replace("'", "")
    assert "namd evaluate --run" in err and not (run.stage("report") / "index.html").exists()
    with pytest.raises(RunFileError, match=re.escape(message)):
        write_model_card(tmp_path / "card", run, CARD_DIRS, CARD_FACTS)


# ---------------------------------------------------------------- metrics.json: freshness

def test_evaluate_records_what_it_read(evaluated):
    info = json.loads((evaluated.stage("eval") / "run_info.json").read_text())
    for folder in ("vae", "prior", "cond", "evaluator", "samples", "samples_null_context"):
        now = json.loads((evaluated.stage(folder) / "run_info.json").read_text())
        assert info["inputs"][folder] == f"{now['time_utc']} (run {now['run_id'][:12]})"
    for folder in ("cohort", "samples_no_align", "cond_no_align"):  # no run_info.json
        assert info["inputs"][folder] is None


def test_metrics_older_than_the_samples_are_refused(evaluated, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    shutil.copytree(evaluated.path, run.path)
    config = load_config(base=run.saved_config())
    build_report(run, config)  # current: builds
    time.sleep(1.1)  # run_info's time_utc has whole seconds
    write_samples(run, config, "namd", 2)  # sampled again with another K, not evaluated
    message = (rf"{run.stage('eval')}/metrics.json: older than {run.stage('samples')} \(made "
               r"again .*\).* re-run `namd evaluate --run ")
    with pytest.raises(RunFileError, match=message):
        build_report(run, config)
    with pytest.raises(RunFileError, match=message):
        write_model_card(tmp_path / "card", run, CARD_DIRS, CARD_FACTS)
    assert main(["report", "--run", str(run.path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    evaluate.evaluate_run(run, config)
    build_report(run, config)  # evaluated again: current
    assert "| namd |" in write_model_card(tmp_path / "card", run, CARD_DIRS, CARD_FACTS).read_text()


def test_a_stage_made_again_within_the_same_second_is_told_apart(evaluated, tmp_path):
    """run_info's time_utc has whole seconds; its run_id tells two runs of a stage apart."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(evaluated.path, run.path)
    config = load_config(base=run.saved_config())
    before = json.loads((run.stage("samples") / "run_info.json").read_text())
    write_samples(run, config, "namd", 2)  # sampled again
    edit_json(run.stage("samples") / "run_info.json", time_utc=before["time_utc"])  # same second
    with pytest.raises(RunFileError, match=r"older than .*samples \(made again .*\(run [0-9a-f]{12}\)"):
        Context(run, config).metrics()


def test_a_stage_made_or_removed_after_evaluation_makes_metrics_stale(evaluated, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(evaluated.path, run.path)
    shutil.rmtree(run.stage("samples_null_context"))
    with pytest.raises(RunFileError, match=r"samples_null_context \(no longer finished"):
        Context(run, load_config("tiny")).metrics()
    # an evaluation by a namd that kept no record: no stage may have finished after it
    edit_json(run.stage("eval") / "run_info.json", inputs=None)
    Context(run, load_config("tiny")).metrics()
    edit_json(run.stage("evaluator") / "run_info.json", time_utc="2999-01-01T00:00:00Z")
    with pytest.raises(RunFileError, match=r"older than .*evaluator \(finished 2999-01-01"):
        Context(run, load_config("tiny")).per_nodule()


# ---------------------------------------------------------------- rows of one table, one K

def test_rows_sampled_with_another_k_are_flagged(evaluated, tmp_path):
    m = json.loads((evaluated.stage("eval") / "metrics.json").read_text())
    rows = {r["name"]: r for r in m["rows"]}
    assert m["k"] == 1 and rows["namd"]["k"] == 1 and rows["null_context"]["k"] == 3
    assert k_differs(m) == {"null_context": 3}
    text = format_table(m)
    line = next(li for li in text.splitlines() if li.startswith("null_context"))
    assert line.split()[1] == "3*"
    assert next(li for li in text.splitlines()[2:] if li.startswith("namd ")).split()[1] == "1"
    assert text.splitlines()[-1].startswith("* K differs from the table's K = 1: null_context "
                                            "K = 3;")
    run = RunDir(tmp_path / "run")
    shutil.copytree(evaluated.path, run.path)
    path, sections = build_report(run, load_config(base=run.saved_config()))
    table = next(s for s in sections if s.key == "table")
    assert table.status == "partial" and "K differs from the table" in table.body
    reading = next(s for s in sections if s.key == "reading")
    assert "ran with K = 3, not K = 1" in reading.body
    card = write_model_card(tmp_path / "card", run, CARD_DIRS, CARD_FACTS).read_text()
    assert "| null_context (K = 3 *) |" in card and "K differs from the table's K = 1" in card
