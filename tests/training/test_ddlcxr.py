"""DDL-CXR's stages (namd.training.ddlcxr_vae, namd.training.ddlcxr) and its sampler
(namd.inference.ddlcxr_sampler): the ramp's clock, the loss falling, overfitting a handful of
pairs, per-seed and batch-independent samples, and the stages end to end on a tiny run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from namd.cohort.ehr import EHR
from namd.cohort.store import CohortWriter
from namd.config import SamplingConfig, TrainConfig, load_config, methods, save_config
from namd.config.ddlcxr import DDLCXRConfig, DDLCXRUNetConfig, RecordEncoderConfig
from namd.config.methods import DDLCXR_FILES as FILES
from namd.inference.ddlcxr_sampler import DDLCXRSampler
from namd.models.ddlcxr import (
    RecordEncoder,
    build_unet,
    fit_standardiser,
    label_head,
    training_scheduler,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.training.ddlcxr import DDLCXRTask, RampClock
from namd.training.trainer import Trainer

CFG = DDLCXRConfig(unet=DDLCXRUNetConfig(block_out_channels=(8, 16), head_channels=8, norm_num_groups=4),
                   record=RecordEncoderConfig(d_model=16, heads=2, feedforward=16, dropout=0.0))
SHAPE = (4, 4, 4)


class Pairs:
    """In-memory pairs as a BatchSource (one rotation slot), with labels."""

    def __init__(self, z1, z2, ehrs, labels):
        self.z1, self.z2, self.ehrs, self.labels = z1, z2, ehrs, labels

    def __len__(self):
        return len(self.z1)

    def batch(self, idx):
        return {"z1": self.z1[idx][:, None], "z2": self.z2[idx][:, None],
                "ehr": [self.ehrs[i] for i in idx], "label": self.labels[idx]}


def _pairs(n: int, seed: int = 0) -> Pairs:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, *SHAPE, generator=g)
    z2 = z1 + 0.3 * torch.randn(n, *SHAPE, generator=g)
    ehrs = [EHR(SCT_LONG_DIA=4.0 + i, age=55.0 + i, gender=1 + i % 2) for i in range(n)]
    return Pairs(z1, z2, ehrs, torch.tensor([float(i % 2) for i in range(n)]))


def _task(data: Pairs, steps: int, cfg: DDLCXRConfig = CFG) -> DDLCXRTask:
    unet = build_unet(cfg.unet, latent_channels=4, context_dim=cfg.record.d_model, sample_size=4, seed=0)
    torch.manual_seed(1)
    encoder = RecordEncoder(cfg.record, fit_standardiser(data.ehrs))
    clock = RampClock(len(data), steps, cfg.train.batch_size * cfg.train.grad_accum)
    return DDLCXRTask(unet, encoder, label_head(cfg.record, 2), training_scheduler(cfg), cfg, clock)


def _fit(tmp_path, data: Pairs, steps: int, lr: float = 3e-3) -> tuple[DDLCXRTask, list[dict]]:
    cfg = CFG.model_copy(update={"train": TrainConfig(lr=lr, batch_size=4, max_steps=steps, val_every=10_000,
                                                      checkpoint_every=10_000, rotation_augment=False)})
    task = _task(data, steps, cfg)
    Trainer(cfg.train, tmp_path).fit(task, data)
    with (tmp_path / "log.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["phase"] == "train"]
    return task, rows


def _sampler(task: DDLCXRTask) -> DDLCXRSampler:
    task.unet.eval()
    task.encoder.eval()
    return DDLCXRSampler(task.unet, task.encoder, torch.nn.Identity(), 1.0, dict(task.scheduler.config),
                         (-1000.0, 400.0), 1.0)


def _cond(sampler: DDLCXRSampler, data: Pairs, keys=None):
    from namd.inference.sampler import Conditioning

    with torch.no_grad():
        tokens = sampler.encoder(data.ehrs)[1]
    keys = keys or [f"pair{i}" for i in range(len(data))]
    return Conditioning(keys, data.z1, tokens, torch.zeros(tokens.shape[1:]))


# -- the ramp's clock -----------------------------------------------------------------------------
def test_the_ramp_counts_the_trainers_epochs(tmp_path):
    """The trainer tells the task each optimizer step (at_step, 0-based, each step once); the
    ramp is the completed epochs of that step over the plan's epochs."""
    clock = RampClock(40, 25, 8)  # 40 pairs, effective batch 8: 5 steps per epoch, 5 epochs
    assert [clock(s) for s in (0, 3, 4, 5, 17, 24)] == [0.0, 0.0, 0.0, 0.2, 0.6, 0.8]

    class Counting:
        def __init__(self):
            self.w, self.steps = torch.nn.Linear(1, 1), []

        def trainable(self):
            return {"w": self.w}

        def frozen(self):
            return {}

        def at_step(self, step):
            self.steps.append(step)

        def loss(self, batch, generator, train):
            return self.w(batch["x"]).pow(2).mean(), {}

    class Data:
        def __len__(self):
            return 8

        def batch(self, idx):
            return {"x": torch.ones(len(idx), 1)}

    task = Counting()
    Trainer(TrainConfig(batch_size=4, grad_accum=2, max_steps=3, seed=7), tmp_path).fit(task, Data(), None)
    assert task.steps == [0, 1, 2]


# -- training -------------------------------------------------------------------------------------
def test_training_loss_falls_on_a_small_set(tmp_path):
    _, rows = _fit(tmp_path, _pairs(16), 40)
    mse = [float(r["mse"]) for r in rows]
    assert np.mean(mse[-8:]) < 0.7 * np.mean(mse[:8])
    assert float(rows[0]["ramp"]) == 0.0 and float(rows[-1]["ramp"]) > 0.8  # ramped in by epochs


def test_overfits_a_handful_of_pairs_and_samples_approach_the_real_followups(tmp_path):
    data = _pairs(4, seed=3)
    untrained = _sampler(_task(data, 1))
    task, _ = _fit(tmp_path, data, 250, lr=5e-3)
    cfg = SamplingConfig(k=4, seed=1, steps=4)
    before = untrained.generate(_cond(untrained, data), cfg, show_progress=False)
    after = _sampler(task).generate(_cond(_sampler(task), data), cfg, show_progress=False)
    err_before = (before - data.z2[:, None]).pow(2).mean().item()
    err_after = (after - data.z2[:, None]).pow(2).mean().item()
    assert err_after < 0.5 * err_before
    # the mean of K lies nearer the real follow-up than the baseline does (a copy), and each
    # nodule's samples lie nearest its own follow-up
    mean = after.mean(1)
    assert (mean - data.z2).pow(2).mean() < 0.95 * (data.z1 - data.z2).pow(2).mean()
    dist = torch.cdist(mean.flatten(1), data.z2.flatten(1))
    assert dist.argmin(1).tolist() == [0, 1, 2, 3]


def test_resume_matches_an_uninterrupted_run_ramp_and_batchnorm_included(tmp_path):
    from safetensors.torch import load_file

    data = _pairs(8)
    cfg = CFG.model_copy(update={"record": CFG.record.model_copy(update={"dropout": 0.2})})

    def fit(out, steps, resume=False):
        train = TrainConfig(lr=1e-3, batch_size=4, max_steps=steps, checkpoint_every=3, val_every=10_000,
                            rotation_augment=False)
        Trainer(train, out).fit(_task(data, 6, cfg), data, resume=resume)

    fit(tmp_path / "full", 6)
    fit(tmp_path / "part", 3)
    torch.manual_seed(123)
    fit(tmp_path / "part", 6, resume=True)
    full, part = (load_file(str(tmp_path / d / "checkpoints/last/record_encoder.safetensors"))
                  for d in ("full", "part"))
    assert any("running_mean" in k for k in full)
    for key in full:
        assert torch.equal(full[key], part[key]), key
    ramps = [r["ramp"] for r in csv.DictReader((tmp_path / "part/log.csv").open()) if r["phase"] == "train"]
    assert ramps == [r["ramp"] for r in csv.DictReader((tmp_path / "full/log.csv").open()) if r["phase"] == "train"]


# -- sampling -------------------------------------------------------------------------------------
def test_samples_are_per_seed_batch_independent_and_differ_over_k():
    data = _pairs(3)
    sampler = _sampler(_task(data, 1))
    cond = _cond(sampler, data)
    small = sampler.generate(cond, SamplingConfig(k=3, max_batch=2, steps=3), show_progress=False)
    large = sampler.generate(cond, SamplingConfig(k=3, max_batch=64, steps=3), show_progress=False)
    assert small.shape == (3, 3, *SHAPE) and torch.isfinite(small).all()
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-4)
    alone = sampler.generate(_cond(sampler, Pairs(data.z1[1:2], data.z2[1:2], data.ehrs[1:2], data.labels[1:2]),
                                   ["pair1"]), SamplingConfig(k=3, steps=3), show_progress=False)
    torch.testing.assert_close(alone[0], large[1], rtol=1e-4, atol=1e-4)
    assert (large[:, 0] - large[:, 1]).abs().amax() > 1e-2  # x_T drawn per seed: K samples differ
    other = sampler.generate(cond, SamplingConfig(k=3, seed=24, steps=3), show_progress=False)
    assert (other - large).abs().amax() > 1e-2
    own = sampler.sampling_config(SamplingConfig(steps=50, eta=0.0, scheduler="dpmsolver++"))
    assert (own.steps, own.eta, own.scheduler) == (50, 1.0, "ddim")  # its DDIM and eta, cfg's steps


# -- the stages end to end ------------------------------------------------------------------------
TINY = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.pretrained=null", "diffusion.unet.pretrained=null",
        "ddlcxr.vae.block_out_channels=[8,8,8]", "ddlcxr.vae.norm_num_groups=4",
        "ddlcxr.vae.train.max_steps=2", "ddlcxr.vae.train.batch_size=4", "ddlcxr.vae.report_folds=2",
        "ddlcxr.vae.report_knn_k=2", "ddlcxr.vae.report_grid=2", "ddlcxr.unet.block_out_channels=[8,16]",
        "ddlcxr.unet.head_channels=8", "ddlcxr.unet.norm_num_groups=4", "ddlcxr.record.d_model=16",
        "ddlcxr.record.heads=2", "ddlcxr.record.feedforward=16", "ddlcxr.train.max_steps=2",
        "ddlcxr.train.batch_size=4", "ddlcxr.train.val_every=1", "ddlcxr.sampling_steps=2", "sampling.k=2"]


def _write_cohort(path) -> None:
    """16 x 16 crops: 12 pairs (6 train, 3 val, 3 test) and 6 unpaired training crops."""
    from helpers import disc

    rng = np.random.default_rng(0)
    writer = CohortWriter(path, crop_size=16, pixel_spacing_mm=1.0, source="test")
    for p in range(18):
        split = "train" if p < 6 or p >= 12 else "val" if p < 9 else "test"
        label, ehr = p % 2, EHR(SCT_LONG_DIA=4.0 + p, SCT_PERP_DIA=3.0, age=60.0 + p, gender=1 + p % 2,
                                SCT_PRE_ATT=1, SCT_EPI_LOC=1, SCT_MARGINS=2)
        common = dict(patient_id=f"p{p}", nodule_id="n", split=split, ehr=ehr)
        if p < 12:
            for t in (0, 1):
                writer.add(disc(2 + label * (1 + t), rng), kind=("baseline", "followup")[t], label=label,
                           pair_id=f"pair{p}", timepoint=t, **common)
        else:
            writer.add(disc(2 + label, rng), kind="unpaired", label=None, **common)
    writer.close()


@pytest.fixture(scope="module")
def ddlcxr_run(tmp_path_factory):
    """A tiny run with both DDL-CXR stages trained (two steps each)."""
    from namd.training import ddlcxr, ddlcxr_vae

    run = RunDir(tmp_path_factory.mktemp("ddlcxr") / "run")
    _write_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=TINY)
    save_config(config, run.path / "config.yaml")
    ddlcxr_vae.run_stage(config, run)
    ddlcxr.run_stage(config, run)
    return run, config


def test_stages_write_namds_vae_files_and_the_samplers_files(ddlcxr_run):
    run, config = ddlcxr_run
    vae = run.stage("vae_ddlcxr")
    for name in ("autoencoder/config.json", "latent_scale.json", "probe.safetensors", "report.json"):
        assert (vae / name).is_file(), name
    assert run.is_done("vae_ddlcxr") and run.is_done("cond_ddlcxr")
    for name in FILES:
        assert (run.stage("cond_ddlcxr") / name).is_file(), name
    with (vae / "log.csv").open() as fh:
        assert "pred_weight" in next(csv.reader(fh))  # the adaptive label weight is logged
    sampler = DDLCXRSampler.from_run(run, {"vae": "vae_ddlcxr", "cond": "cond_ddlcxr"}, config)
    assert methods.sampler_steps(config, methods.get("ddlcxr")) == 2 and sampler.eta == 1.0
    baselines = np.stack([np.full((16, 16), -800.0, np.float32)] * 2)
    cond = sampler.conditioning(["a", "b"], baselines, [EHR(age=60.0), EHR()])
    latents = sampler.generate(cond, config.sampling, show_progress=False)
    assert latents.shape == (2, 2, *sampler.latent_shape)
    crops = sampler.decode(latents.flatten(0, 1))
    assert crops.shape == (4, 16, 16) and np.isfinite(crops).all()


def test_sampler_refuses_a_changed_vae_and_names_a_damaged_file(ddlcxr_run, tmp_path):
    import json
    import shutil

    run, config = ddlcxr_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    dirs = {"vae": "vae_ddlcxr", "cond": "cond_ddlcxr"}
    spec = copy.stage("cond_ddlcxr") / "record_encoder.json"
    spec.write_text(json.dumps({"record": {"d_model": "wide"}, "fields": []}))
    with pytest.raises(RunFileError, match="record_encoder.json"):
        DDLCXRSampler.from_run(copy, dirs, config)
    shutil.copy(run.stage("cond_ddlcxr") / "record_encoder.json", spec)
    info_path = copy.stage("cond_ddlcxr") / "run_info.json"
    info = json.loads(info_path.read_text())
    info["vae_fingerprint"] = "0" * 64  # as if the VAE were retrained after the U-Net
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="changed after"):
        DDLCXRSampler.from_run(copy, dirs, config)
