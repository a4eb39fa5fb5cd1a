"""Issue 27, goal 1: every number that leaves a stage is finite, or the stage fails in one line
naming what went non-finite and where; no stage hangs on degenerate but finite inputs."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from namd.cli.main import main
from namd.cohort.store import Cohort
from namd.config import load_config, methods
from namd.evaluation import evaluate, measure, quality
from namd.evaluation.report.build import build_report
from namd.evaluation.report.html import quality_table
from namd.evaluation.report.inputs import Context
from namd.evaluation.schema import SCHEMA_VERSION
from namd.inference.sample_stage import write_sample_stage
from namd.inference.sampler import pairs_to_sample
from namd.run.contract import RunFileError
from namd.run.layout import RunDir


def copy_run(tiny_run, tmp_path) -> tuple[RunDir, object]:
    """A writable copy of the finished tiny run and its config."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, run.path)
    return run, load_config(base=run.saved_config())


def write_samples(run: RunDir, config, name: str, k: int, fill) -> None:
    """A method's sample folder through the sample stage's own writer, `fill` filling it."""
    cohort = Cohort(run.stage("cohort"))
    pairs = pairs_to_sample(cohort, "test")
    write_sample_stage(config, run, methods.get(name), cohort, pairs, k, fill, time.perf_counter(),
                       cond_dir=methods.get(name).uses["cond"], vae_dir=methods.get(name).uses["vae"])


def follow_ups_plus_noise(run: RunDir, seed: int = 0):
    """A fill: each pair's real follow-up plus noise, in the sample stage's row order."""
    cohort = Cohort(run.stage("cohort"))
    follow = cohort.images(pairs_to_sample(cohort, "test")["followup_index"])

    def fill(arr):
        rng = np.random.default_rng(seed)
        arr[:] = follow[:, None] + rng.normal(0, 20, arr.shape).astype(np.float32)
    return fill


# ---------------------------------------------------------------- no hang on degenerate crops

def test_disc_opening_equals_scipys_opening_by_a_disc():
    rng = np.random.default_rng(0)
    for trial in range(300):
        size = int(rng.integers(8, 40))
        mask = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(0.5, 4)) > 0
        if trial % 10 == 0:
            mask[:] = True  # tissue everywhere: the case that hung
        radius = int(rng.integers(1, 30))
        disc = np.hypot(*np.ogrid[-radius:radius + 1, -radius:radius + 1]) <= radius
        np.testing.assert_array_equal(measure.disc_opening(mask, radius),
                                      ndimage.binary_opening(mask, structure=disc))


def test_all_zero_hu_samples_are_measured_fast_and_finite():
    """All 0 HU (tissue everywhere): the opening with a crop-sized disc took 0.3 s a crop at 64
    px, which made `namd evaluate` run for hours on a demo's samples."""
    rng = np.random.default_rng(1)
    n, k, size = 10, 10, 64
    real = rng.normal(-850, 30, (n, size, size)).astype(np.float32)
    real[:, 28:36, 28:36] = 40.0
    zeros = np.zeros((n, k, size, size), np.float32)
    start = time.perf_counter()
    block, per_crop = quality.image_quality(zeros, real, np.full(n, 0.7), (-1000.0, 400.0),
                                            np.zeros((n, k, 8)), rng.normal(size=(n, 8)))
    assert time.perf_counter() - start < 10.0  # 100 crops: about 0.3 s now, over 30 s before
    # no lung in the crop: the tissue spans it, and the error says so rather than hiding it
    extent = np.hypot(size, size) * 0.7
    assert 0.6 * extent < block["diameter_mm"]["generated_mean"] <= extent
    assert all(np.isfinite(v).all() for v in per_crop.values())
    assert np.isfinite(block["frechet_evaluator"]) and np.isfinite(block["ssim"]["mean"])


# ---------------------------------------------------------------- the sample stage

def test_sample_stage_refuses_non_finite_samples_and_writes_nothing(tiny_run, tmp_path):
    run, config = copy_run(tiny_run, tmp_path)

    def nan_fill(arr):
        arr[:] = 0.0
        arr[1, 0, 3, 3] = np.nan

    with pytest.raises(RunFileError) as caught:
        write_samples(run, config, "namd", 2, nan_fill)
    text = str(caught.value)
    assert text.startswith(f"{run.stage('samples')}: 1 of 4 decoded samples hold NaN or inf")
    assert str(run.stage("cond")) in text and str(run.stage("vae")) in text
    assert "namd train cond" in text and "\n" not in text
    assert not run.stage("samples").exists() and not list(run.path.glob(".samples*"))


def test_namd_sample_with_nan_weights_fails_in_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    from namd.inference.sampler import FollowUpSampler

    run, _ = copy_run(tiny_run, tmp_path)
    load = FollowUpSampler.from_run.__func__

    def nan_unet(cls, *args, **kwargs):
        sampler = load(cls, *args, **kwargs)
        with torch.no_grad():
            for p in sampler.unet.parameters():
                p.fill_(float("nan"))
        return sampler

    monkeypatch.setattr(FollowUpSampler, "from_run", classmethod(nan_unet))
    assert main(["sample", "--run", str(run.path), "--split", "test"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoded samples hold NaN or inf" in err
    assert str(run.stage("cond")) in err
    assert not run.stage("samples").exists()


# ---------------------------------------------------------------- predict, the API

def test_pipeline_refuses_nan_weights_naming_them(tiny_run):
    from namd import NAMDPipeline
    from namd.cohort.ehr import EHR

    pipe = NAMDPipeline.from_run(tiny_run.path)
    crop = Cohort(tiny_run.stage("cohort")).images([0])[0]
    ehr = EHR(SCT_LONG_DIA=5.0, age=60.0, gender=1)
    assert np.isfinite(pipe([crop], [ehr], k=1, num_inference_steps=1)).all()
    with torch.no_grad():
        for p in pipe.sampler.unet.parameters():
            p.fill_(float("nan"))
    for call in (lambda: pipe([crop], [ehr], k=2, num_inference_steps=1),
                 lambda: pipe.predict([crop], [ehr], k=2, num_inference_steps=1)):
        with pytest.raises(RunFileError, match=r"unet/diffusion_pytorch_model.safetensors: 2 of 2 "
                                               r"virtual follow-ups hold NaN or inf"):
            call()


def test_pipeline_refuses_nan_probabilities_naming_the_evaluator(tiny_run):
    from namd import NAMDPipeline
    from namd.cohort.ehr import EHR

    pipe = NAMDPipeline.from_run(tiny_run.path)
    with torch.no_grad():
        for p in pipe.evaluator.parameters():
            p.fill_(float("nan"))
    crop = Cohort(tiny_run.stage("cohort")).images([0])[0]
    with pytest.raises(RunFileError, match=r"evaluator.*safetensors: the evaluator gives .* NaN"):
        pipe.predict([crop], [EHR(SCT_LONG_DIA=5.0, age=60.0, gender=1)], k=1,
                     num_inference_steps=1)


# ---------------------------------------------------------------- evaluate

def test_evaluate_refuses_an_evaluator_that_gives_nan(tiny_run, tmp_path, monkeypatch):
    run, config = copy_run(tiny_run, tmp_path)
    write_samples(run, config, "namd", 2, follow_ups_plus_noise(run))
    real = evaluate.load_evaluator

    def nan_evaluator(folder):
        model, window, info = real(folder)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return model, window, info

    monkeypatch.setattr(evaluate, "load_evaluator", nan_evaluator)
    with pytest.raises(RunFileError, match=r"evaluator: the evaluator gives NaN or inf "
                                           r"probabilities \(2 of 2\) on the crops of row "
                                           r"real_baseline"):
        evaluate.evaluate_run(run, config)
    assert not (run.stage("eval") / "metrics.json").exists()


def test_evaluate_finishes_on_all_zero_samples(tiny_run, tmp_path):
    run, config = copy_run(tiny_run, tmp_path)
    write_samples(run, config, "namd", 2, lambda arr: arr.fill(0.0))
    result = evaluate.evaluate_run(run, config)
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["namd"]["status"] == "ok" and rows["namd"]["auroc"]["mean"] == 0.5  # constant
    assert result["image_quality"]["namd"]["status"] == "ok"


# ---------------------------------------------------------------- report

def _metrics_file(run: RunDir, metrics: dict) -> None:
    run.stage("eval").mkdir(parents=True, exist_ok=True)
    (run.stage("eval") / "metrics.json").write_text(json.dumps(metrics))


def _ok_metrics() -> dict:
    stat = {"mean": 0.7, "std": 0.01, "ci95": [0.6, 0.8]}
    return {"schema_version": SCHEMA_VERSION, "split": "test", "n_test": 10, "n_malignant": 3, "k": 2,
            "rows": [{"name": "real_baseline", "status": "ok", "k": 1, "auroc": dict(stat),
                      "auprc": dict(stat)}]}


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["rows"][0]["auroc"].update(mean=float("nan")), r"rows\[0\].auroc.mean \(nan\) is "
                                                                 r"not a finite number"),
    (lambda m: m.update(n_test=float("inf")), r"n_test \(inf\) is not a finite number"),
    (lambda m: m["rows"][0]["auprc"].update(mean=None), r"row real_baseline \(status ok\): "
                                                          r"auprc.mean is None"),
    (lambda m: m["rows"][0].update(k=None), r"row real_baseline \(status ok\): k is None"),
])
def test_report_refuses_non_finite_or_absent_numbers(tmp_path, capsys, damage, message):
    run = RunDir(tmp_path / "run")
    metrics = _ok_metrics()
    damage(metrics)
    _metrics_file(run, metrics)
    with pytest.raises(RunFileError, match=message):
        Context(run, load_config("tiny")).metrics()
    assert main(["report", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err and "namd evaluate --run" in err
    assert not (run.stage("report") / "index.html").exists()


def test_report_refuses_samples_that_hold_nan(tmp_path):
    run, config = RunDir(tmp_path / "run"), load_config("tiny")
    folder = run.stage("samples")
    folder.mkdir(parents=True)
    arr = np.zeros((2, 2, 4, 4), np.float32)
    arr[1, 1, 0, 0] = np.inf
    np.save(folder / "samples.npy", arr)
    (folder / "index.csv").write_text("pair_id,baseline_index,followup_index\na,0,1\nb,2,3\n")
    with pytest.raises(RunFileError, match=r"samples.npy: 1 samples hold NaN or inf"):
        Context(run, config).samples("samples")


def test_quality_table_with_an_absent_number_is_not_ok():
    ok = {"status": "ok", "mae_hu": {"mean": 50.0}, "psnr": {"mean": 20.0},
          "ssim": {"mean": 0.5}, "frechet_evaluator": 3.0, "diameter_error_mm": {"mean": 1.0}}
    assert 'class="missing"' not in quality_table({"namd": ok})
    text = quality_table({"namd": {**ok, "psnr": {"mean": None}, "frechet_evaluator": None}})
    note = text.split('class="missing"')[-1]
    assert "NAMD (generated follow-up): psnr; NAMD (generated follow-up): frechet_evaluator" in note


def test_a_full_report_on_nan_free_metrics_still_builds(tiny_run, tmp_path):
    """The checks refuse only what is wrong: an evaluated tiny run gives a report."""
    run, config = copy_run(tiny_run, tmp_path)
    write_samples(run, config, "namd", 2, follow_ups_plus_noise(run))
    evaluate.evaluate_run(run, config)
    path, sections = build_report(run, config)
    statuses = {s.key: s.status for s in sections}
    assert path.is_file() and statuses["table"] == "ok" and statuses["reading"] == "ok"


def test_export_refuses_weights_that_diverged_to_nan(tiny_run, tmp_path):
    """A model whose loaded weights hold NaN (a diverged training, not a damaged file: the
    sha256s agree) is not exported; nothing is written."""
    import namd.inference.pipeline as pipeline_module

    pipe = pipeline_module.NAMDPipeline.from_run(tiny_run, device="cpu")
    with torch.no_grad():
        next(pipe.evaluator.parameters()).fill_(float("nan"))
    with pytest.raises(RunFileError, match=r"vit.safetensors: evaluator tensor .* holds NaN or inf"):
        pipe.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model*"))
