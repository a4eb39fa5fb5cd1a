"""The table of methods: one entry is all a new generator needs. A toy method (the baseline plus
Gaussian noise, a module of this test and one `register`) goes through `namd demo`'s plan and
walk, `namd sample`, `namd evaluate` and `namd report` with no other file changed."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from namd.cli.commands.demo import demo_methods, method_list
from namd.cli.graph import plan, run_pipeline
from namd.cli.main import main
from namd.config import load_config, methods
from namd.config.methods import Method
from namd.inference.sample_stage import open_sample_stage, write_sample_stage
from namd.run.contract import by_folder
from namd.run.layout import RunDir, stages

NOISE_HU = 25.0


def sample_baseline_plus_noise(config, run, method, *, overwrite=False, device="cpu"):
    """The toy generator: each of K follow-ups is the baseline plus seeded Gaussian noise."""
    cohort, pairs = open_sample_stage(run, method, config.sampling.split, overwrite)
    base = cohort.images(pairs["baseline_index"])
    rng = np.random.default_rng(config.sampling.seed)
    k = config.sampling.k if method.stochastic else 1

    def fill(arr):
        arr[:] = base[:, None] + rng.normal(0.0, NOISE_HU, size=arr.shape).astype(np.float32)

    return write_sample_stage(config, run, method, cohort, pairs, k, fill, time.perf_counter(),
                              noise_hu=NOISE_HU)


@pytest.fixture
def toy():
    method = methods.register(Method("toy_noise", "Baseline plus noise (toy)",
                                     sample=sample_baseline_plus_noise, loadable=False,
                                     in_demo=False))
    yield method
    methods.unregister("toy_noise")


def test_the_table_declares_namd_and_its_ablations_once():
    assert list(methods.METHODS) == ["namd", "no_align", "null_context", "sd15", "flux", "ddlcxr",
                                     "mcwgan", "corrflownet_ode", "corrflownet_sde", "imageflownet"]
    assert demo_methods() == ("namd", "no_align", "null_context")
    namd, no_align, null = (methods.get(n) for n in demo_methods())
    assert [s.folder for s in namd.trains] == ["vae", "prior", "cond"]
    assert [s.folder for s in no_align.trains] == ["vae_no_align", "prior_no_align", "cond_no_align"]
    assert null.uses == {"vae": "vae", "prior": "prior", "cond": "cond_null_context"}
    assert (namd.samples, no_align.samples, null.samples) == (
        "samples", "samples_no_align", "samples_null_context")
    assert null.argv == ("--method", "null_context") and namd.argv == ()
    with pytest.raises(ValueError, match="unknown method 'sd14'; choose one of namd, no_align"):
        methods.get("sd14")
    with pytest.raises(ValueError, match="method null_context trains no vae stage"):
        null.stage("vae")
    with pytest.raises(ValueError, match="already in the table"):
        methods.register(Method("namd", "again"))


def test_every_list_of_stages_derives_from_the_table(toy, tmp_path):
    assert "samples_toy_noise" in stages() and "samples_toy_noise" in by_folder()
    assert method_list("all")[-1] == "toy_noise" and "toy_noise" not in demo_methods()
    steps = {s.folder: s for s in plan(RunDir(tmp_path), ("namd", "toy_noise"))}
    assert steps["samples_toy_noise"].argv[-2:] == ("--method", "toy_noise")
    assert steps["samples_toy_noise"].needs == ("cohort",)
    assert "samples_toy_noise" in steps["eval"].needs and "vae_no_align" not in steps
    assert by_folder()["samples_toy_noise"].command.endswith("--split test --method toy_noise")


def test_a_toy_method_runs_through_sample_evaluate_and_report(toy, tiny_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, run.path)
    run.mark_done("cohort", load_config("tiny"), 0)  # made by a test helper, not `namd synth`
    timings = run_pipeline(run, ("toy_noise",), jobs=1)  # the plan's walk: sample, eval, report
    assert timings["samples_toy_noise"] > 0 and timings["eval"] > 0 and timings["report"] > 0
    samples = np.load(run.stage("samples_toy_noise") / "samples.npy")
    info = json.loads((run.stage("samples_toy_noise") / "run_info.json").read_text())
    assert info["method"] == "toy_noise" and samples.shape[1] == info["k"] > 1
    metrics = json.loads((run.stage("eval") / "metrics.json").read_text())
    row = next(r for r in metrics["rows"] if r["name"] == "toy_noise")
    assert row["status"] == "ok" and row["description"] == "Baseline plus noise (toy)"
    assert row["k"] == info["k"] and 0.0 <= row["auroc"]["mean"] <= 1.0
    assert metrics["image_quality"]["toy_noise"]["status"] == "ok"
    assert metrics["image_quality"]["toy_noise"]["mae_hu"]["mean"] > 0
    assert "Baseline plus noise (toy)" in (run.stage("report") / "index.html").read_text()
    # the command line knows it too: sampling it again is refused without --overwrite
    assert main(["sample", "--run", str(run.path), "--method", "toy_noise"]) == 1


@pytest.fixture
def toy_once():
    method = methods.register(Method("toy_once", "Baseline plus noise, once (toy)",
                                     sample=sample_baseline_plus_noise, loadable=False,
                                     in_demo=False, stochastic=False))
    yield method
    methods.unregister("toy_once")


def test_a_deterministic_method_samples_once_and_is_scored_as_one_follow_up(toy_once, tiny_run,
                                                                             tmp_path):
    from namd.evaluation.report.table1 import groups
    from namd.evaluation.table_text import k_differs

    config = load_config("tiny")
    assert methods.sampling_of(config, toy_once).k == 1
    assert methods.sampling_of(config, methods.get("namd")).k == config.sampling.k
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, run.path)
    run.mark_done("cohort", config, 0)
    run_pipeline(run, ("toy_once",), jobs=1)
    assert np.load(run.stage("samples_toy_once") / "samples.npy").shape[1] == 1
    metrics = json.loads((run.stage("eval") / "metrics.json").read_text())
    row = next(r for r in metrics["rows"] if r["name"] == "toy_once")
    assert row["status"] == "ok" and row["k"] == 1 and row["auroc"]["std"] == 0.0
    assert "toy_once" not in k_differs(metrics)  # one follow-up by design, not another K
    assert "toy_once" in dict(groups())["Deterministic"]
    assert "Baseline plus noise, once (toy)" in (run.stage("report") / "index.html").read_text()


def test_only_methods_with_a_vae_and_a_conditional_model_load_in_the_pipeline():
    assert {"mcwgan", "imageflownet", "corrflownet_ode"}.isdisjoint(methods.loadable())
    assert {"namd", "sd15", "flux", "ddlcxr"} <= set(methods.loadable())
