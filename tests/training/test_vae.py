"""The VAE stage end to end on a tiny cohort: what it writes, the ablation, skip/resume rules,
exact resume of the VAE task, batch contents and the L_align / L_pred masking."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from namd.cohort.ehr import EHR
from namd.cohort.store import Cohort, CohortWriter
from namd.config import load_config
from namd.models.probe import LinearProbe, load_probe
from namd.models.vae import build_vae, latent_shape, load_trained_vae
from namd.models.vae_data import split_source, training_statistics
from namd.run.layout import RunDir
from namd.training.trainer import Trainer
from namd.training.vae import VAETask, run_stage

CROP = 32
OVERRIDES = ["data.crop_size=32", "vae.block_out_channels=[8,16]", "vae.norm_num_groups=4",
             "vae.layers_per_block=1", "vae.train.max_steps=6", "vae.train.batch_size=8",
             "vae.train.checkpoint_every=3", "vae.train.val_every=3", "vae.train.val_batches=1",
             "vae.report_grid=4", "vae.report_folds=2", "vae.report_knn_k=2",
             "vae.pretrained=null", "diffusion.unet.pretrained=null"]  # 32-pixel crops: no foundation


def disk(diameter_px: float, rng: np.random.Generator) -> np.ndarray:
    """A bright disk of the given diameter on noisy lung background, in HU."""
    yy, xx = np.mgrid[:CROP, :CROP] - (CROP - 1) / 2
    img = np.where(np.hypot(yy, xx) <= diameter_px / 2, 40.0, -850.0)
    return (img + rng.normal(0, 30, img.shape)).astype(np.float32)


def write_cohort(path) -> None:
    """48 crops: 16 pairs and 16 unpaired crops of 32 patients, some features missing."""
    rng = np.random.default_rng(0)
    writer = CohortWriter(path, crop_size=CROP, pixel_spacing_mm=0.7, source="test")
    for p in range(32):
        split = "train" if p < 22 else "val" if p < 29 else "test"
        long = float(rng.uniform(4, 20))
        ehr = EHR(SCT_PRE_ATT=int(rng.choice([1, 2, 3])), SCT_EPI_LOC=int(rng.integers(1, 7)),
                  SCT_LONG_DIA=None if p % 7 == 3 else round(long, 1), SCT_PERP_DIA=round(long * 0.8, 1),
                  SCT_MARGINS=int(rng.choice([1, 2, 3])), age=60.0)
        common = dict(patient_id=f"p{p}", nodule_id="n1", split=split, ehr=ehr)
        if p < 16:
            label = int(long > 12)
            writer.add(disk(long / 0.7, rng), kind="baseline", label=label, pair_id=f"pair{p}", **common)
            writer.add(disk(long * 1.1 / 0.7, rng), kind="followup", label=label, pair_id=f"pair{p}",
                       timepoint=1, **common)
        else:
            writer.add(disk(long / 0.7, rng), kind="unpaired", label=None, **common)
    writer.close()


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cohort") / "cohort"
    write_cohort(path)
    return path


def make_run(tmp_path, cohort_dir) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "cohort").symlink_to(cohort_dir, target_is_directory=True)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cohort_dir):
    """One finished aligned stage (shared by the tests that only read it)."""
    run = make_run(tmp_path_factory.mktemp("trained"), cohort_dir)
    out = run_stage(load_config("tiny", overrides=OVERRIDES), run)
    return run, out


def test_stage_writes_the_contract(trained):
    run, out = trained
    assert out == run.stage("vae") and run.is_done("vae")
    for name in ("latent_scale.json", "probe.safetensors", "alignment.json", "log.csv", "report.json",
                 "tsne.png", "reconstructions.png", "checkpoints/last/state.json",
                 "checkpoints/best/vae.safetensors", "checkpoints/best/probe.safetensors"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    for key in ("recon_mae", "recon_psnr", "recon_ssim", "distance_spearman", "knn_r2_diameter", "probe_auroc"):
        assert key in report
    assert report["recon_mae"] > 0 and np.isfinite(report["recon_psnr"]) and -1 <= report["recon_ssim"] <= 1
    rows = list(csv.DictReader((out / "log.csv").open()))
    for term in ("rec", "kl", "align", "align_n", "pred", "pred_n"):
        assert term in rows[0], term
    assert {r["phase"] for r in rows} == {"train", "val"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["complete"] and info["seed"] == 23 and info["lpips"].startswith("off")
    assert info["config"]["vae"]["align"] is True


def test_checkpoint_selection_leaves_out_the_probe_term(trained):
    run, out = trained
    cfg = load_config("tiny", overrides=OVERRIDES).vae
    val = [r for r in csv.DictReader((out / "log.csv").open()) if r["phase"] == "val"]
    for r in val:  # the logged selection value is Eq. 6 without lambda_pred L_pred
        assert float(r["loss_without_pred"]) == pytest.approx(
            float(r["loss"]) - cfg.lambda_pred * float(r["pred"]), rel=1e-4, abs=1e-6)
    best = min(val, key=lambda r: float(r["loss_without_pred"]))
    assert json.loads((out / "run_info.json").read_text())["best_step"] == int(best["step"])


def test_vae_report_command_rewrites_the_report(trained, capsys):
    from namd.cli.main import main

    run, out = trained
    (out / "report.json").unlink()
    assert main(["vae", "report", str(run.path)]) == 0
    assert "knn_r2_diameter" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["split"] == "val"
    assert main(["vae", "report", str(run.path), "--method", "no_align"]) == 1  # not trained: one-line error
    assert "not a finished VAE stage" in capsys.readouterr().err


def test_scale_factor_is_one_over_the_training_latent_std(trained, cohort_dir):
    run, out = trained
    vae, scale = load_trained_vae(out)
    config = load_config("tiny", overrides=OVERRIDES)
    cohort = Cohort(cohort_dir)
    stats = json.loads((out / "alignment.json").read_text())
    src = split_source(cohort, "train", config, stats)
    with torch.no_grad():
        z = vae.encode(src.batch(np.arange(len(src)))["image"]).latent_dist.mean
    assert scale == pytest.approx(1.0 / float(z.double().std(unbiased=False)), rel=1e-4)
    assert len(src) == 38  # every kind of the train split: 16 pairs and 6 unpaired crops
    assert stats["n_train"] == len(src) and stats["class_weights"][1] == pytest.approx(
        len(src.labels[np.isfinite(src.labels)]) / (2 * stats["n_pos"]))
    probe = load_probe(out)
    assert probe.latent_shape == latent_shape(config.vae, CROP)
    best = load_file(str(out / "checkpoints/best/probe.safetensors"))
    assert torch.equal(best["linear.weight"], probe.linear.weight)


def test_no_align_ablation_and_stage_rules(tmp_path, cohort_dir, trained, caplog):
    run = make_run(tmp_path, cohort_dir)
    config = load_config("tiny", overrides=OVERRIDES)
    out = run_stage(config, run, method="no_align")
    assert out == run.stage("vae_no_align") and not run.stage("vae").exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["config"]["vae"]["align"] is False and config.vae.align is True  # the caller's config untouched
    assert "fitted after training" in info["probe"]
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert "pred" not in rows[0] and "align" in rows[0]  # L_align is monitored, not trained
    assert not (out / "checkpoints/best/probe.safetensors").exists()
    # a finished stage is skipped; an unfinished one needs --resume or --overwrite
    stamp = (out / "run_info.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        run_stage(config, run, method="no_align")
    assert (out / "run_info.json").stat().st_mtime_ns == stamp and "already finished" in caplog.text
    (out / "run_info.json").unlink()
    with pytest.raises(FileExistsError, match="--resume"):
        run_stage(config, run, method="no_align")


def _task(config, stats, seed=0):
    torch.manual_seed(seed)
    vae = build_vae(config.vae)
    return VAETask(vae, LinearProbe(latent_shape(config.vae, CROP)), config.vae, True, stats["class_weights"])


def test_probe_trains_jointly_only_when_l_pred_is_weighted(cohort_dir):
    cohort = Cohort(cohort_dir)
    stats = training_statistics(cohort.crops("train"), "balanced")
    for lam, joint in ((0.05, True), (0.0, False)):
        config = load_config("tiny", overrides=[*OVERRIDES, f"vae.lambda_pred={lam}"])
        task = _task(config, stats)
        batch = split_source(cohort, "train", config, stats).batch(np.arange(8))
        _, terms = task.loss(batch, torch.Generator().manual_seed(0), True)
        assert ("probe" in task.trainable()) is joint and ("pred" in terms) is joint  # else fitted post hoc


def test_interrupted_and_resumed_training_ends_with_the_same_weights(tmp_path, cohort_dir):
    # a constant lr: the interruption is simulated by a shorter run, whose cosine would be shorter
    config = load_config("tiny", overrides=[*OVERRIDES, "vae.train.schedule=constant"])
    cohort = Cohort(cohort_dir)
    stats = training_statistics(cohort.crops("train"), "balanced")
    train, val = split_source(cohort, "train", config, stats), split_source(cohort, "val", config, stats, 23)
    tc = config.vae.train
    Trainer(tc, tmp_path / "full").fit(_task(config, stats), train, val)
    Trainer(tc.model_copy(update={"max_steps": 3}), tmp_path / "part").fit(_task(config, stats), train, val)
    Trainer(tc, tmp_path / "part").fit(_task(config, stats, seed=99), train, val, resume=True)
    for name in ("vae", "probe"):
        full = load_file(str(tmp_path / f"full/checkpoints/last/{name}.safetensors"))
        part = load_file(str(tmp_path / f"part/checkpoints/last/{name}.safetensors"))
        assert all(torch.equal(full[k], part[k]) for k in full), name


def test_batches_and_loss_masking(cohort_dir, caplog):
    config = load_config("tiny", overrides=OVERRIDES)
    cohort = Cohort(cohort_dir)
    stats = training_statistics(cohort.crops("train"), "balanced")
    src = split_source(cohort, "train", config, stats)
    batch = src.batch(np.arange(len(src)))
    assert batch["image"].shape == (38, 1, CROP, CROP) and float(batch["image"].abs().max()) <= 1.0
    complete = torch.isfinite(batch["features"]).all(1)
    assert 0 < int(complete.sum()) < len(src)  # some crops lack SCT_LONG_DIA
    np.testing.assert_allclose(batch["features"][complete].mean(0).numpy(), 0.0, atol=0.35)
    unpaired = (src.rows["kind"] == "unpaired").to_numpy().copy()
    assert torch.isnan(batch["label"][unpaired]).all() and torch.isfinite(batch["label"][~unpaired]).all()
    task = _task(config, stats)
    g = torch.Generator().manual_seed(0)
    loss, terms = task.loss(batch, g, train=True)
    assert terms["align_n"] == float(complete.sum()) and terms["pred_n"] == float((~unpaired).sum())
    assert torch.isfinite(loss) and terms["align"] > 0
    one = {k: v[:2].clone() for k, v in batch.items()}
    one["features"][0] = float("nan")
    one["features"][1] = float("nan")
    with caplog.at_level(logging.WARNING):
        _, terms = task.loss(one, g, train=True)
    assert terms["align"] == 0.0 and terms["align_n"] == 0.0 and "L_align = 0" in caplog.text
