"""The ImageFlowNet (SDE) row: both phases learn (the reconstruction, then the SDEs on a handful
of pairs, the U-Net left untouched), its Euler-Maruyama sampler (deterministic without
diffusion, per-seed and batch-independent samples that differ across k), the two stages end to
end on a tiny run (files, the sampler's loading, one-line refusals), the paper preset and the
sizing `namd check` reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import SIZE, write_tiny_cohort

from namd.cohort.store import Cohort
from namd.config import (
    SamplingConfig,
    TrainConfig,
    load_config,
    methods,
    save_config,
    validated_update,
)
from namd.config.imageflownet import (
    ImageFlowNetConfig,
    ImageFlowNetReconConfig,
    ImageFlowNetUNetConfig,
)
from namd.inference.imageflownet_sampler import ImageFlowNetSampler
from namd.inference.sampler import PixelConditioning
from namd.models.imageflownet import build_model, sizing_parts, stage_train_config
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.training import imageflownet as sde_stage
from namd.training import imageflownet_ae as ae_stage
from namd.training.trainer import Trainer

UNET = ImageFlowNetUNetConfig(channels=(8, 8), norm_groups=4, patch=1)
WINDOW = (-1000.0, 400.0)


def _discs(n: int, seed: int = 0, grow: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Baselines: a bright disc of random radius on a dark field (16 x 16, window units);
    follow-ups: the same disc grown by `grow` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    radius = rng.uniform(2.0, 4.0, n)

    def image(r: np.ndarray) -> torch.Tensor:
        inside = xx[None] ** 2 + yy[None] ** 2 <= r[:, None, None] ** 2
        return torch.from_numpy(np.where(inside, 0.6, -0.8).astype(np.float32))[:, None]

    return image(radius), image(radius + grow)


class Pairs:
    """In-memory pairs as a BatchSource."""

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor):
        self.x1, self.x2 = x1, x2

    def __len__(self) -> int:
        return len(self.x1)

    def batch(self, idx):
        return {"x1": self.x1[idx], "x2": self.x2[idx]}


def _fit(task, data, out, steps: int, lr: float, batch: int = 8) -> list[float]:
    """Train with the shared trainer (constant lr, no rotations); the logged training losses."""
    cfg = TrainConfig(lr=lr, batch_size=min(batch, len(data)), max_steps=steps, schedule="constant",
                      val_every=10_000, checkpoint_every=10_000, rotation_augment=False)
    Trainer(cfg, out).fit(task, data)
    lines = (out / "log.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [float(row.split(",")[head.index("loss")]) for row in lines[1:]]


def _sde_config(**changes) -> ImageFlowNetConfig:
    base = {"solver_steps": 4, "train": TrainConfig(rotation_augment=False)}
    return ImageFlowNetConfig(unet=UNET, **{**base, **changes})


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    """A tiny U-Net trained to reconstruct discs (phase 1) and its training losses."""
    x1, x2 = _discs(32)
    model = build_model(UNET, SIZE, scale_init=0.0, seed=0)
    task = ae_stage.ReconTask(model, ImageFlowNetReconConfig(train=TrainConfig(rotation_augment=False)))
    losses = _fit(task, ae_stage.Crops(torch.cat([x1, x2])), tmp_path_factory.mktemp("recon"), 60, 1e-2, 16)
    return model, losses


def test_the_reconstruction_loss_falls(recon):
    _, losses = recon
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_phase_2_learns_a_handful_of_pairs_and_leaves_the_unet_alone(recon, tmp_path):
    """The SDEs overfit four pairs (their loss falls; the forecasts approach the real follow-ups,
    far nearer than the baseline copy), while the frozen encoder and decoder do not move."""
    model, _ = recon
    model.reset_flows(0.5, seed=1)
    model.flows.requires_grad_(True)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("flows")}
    x1, x2 = _discs(4, seed=3)
    task = sde_stage.SDETask(model, _sde_config())
    losses = _fit(task, Pairs(x1, x2), tmp_path, 60, 1e-2)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    with torch.no_grad():
        pred = task.model.forecast(x1, 4, lambda b, n: torch.randn(b, n, generator=torch.Generator().manual_seed(0)))
    err, copy = float((pred - x2).pow(2).mean()), float((x1 - x2).pow(2).mean())
    assert err < 0.3 * copy, (err, copy)


def _sampler(scale: float, seed: int = 2) -> ImageFlowNetSampler:
    model = build_model(UNET, SIZE, scale_init=scale, seed=seed).eval()
    for flow in model.flows:  # a drift that is not the identity's zero
        torch.nn.init.normal_(flow.drift[-1].weight, std=0.1)
    return ImageFlowNetSampler(model, SIZE, WINDOW)


def _cond(rows) -> PixelConditioning:
    x1, _ = _discs(4, seed=7)
    return PixelConditioning([f"pair{i}" for i in rows], x1[rows])


def test_without_diffusion_the_sampler_is_deterministic():
    sampler = _sampler(0.0)
    cfg = SamplingConfig(k=3, seed=1, steps=3)
    out = sampler.generate(_cond([0, 1]), cfg, show_progress=False)
    other = sampler.generate(_cond([0, 1]), validated_update(cfg, {"seed": 9}), show_progress=False)
    assert torch.equal(out[:, 0], out[:, 2]) and torch.equal(out, other)


def test_samples_are_reproducible_per_seed_independent_of_the_batch_and_differ_across_k():
    sampler = _sampler(0.5)
    cfg = SamplingConfig(k=4, seed=23, steps=3)
    one = sampler.generate(_cond([0, 1, 2]), validated_update(cfg, {"max_batch": 1}), show_progress=False)
    many = sampler.generate(_cond([0, 1, 2]), validated_update(cfg, {"max_batch": 64}), show_progress=False)
    assert one.shape == (3, 4, 1, SIZE, SIZE) and torch.isfinite(one).all()
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-4)
    alone = sampler.generate(_cond([1]), cfg, show_progress=False)  # nor on its neighbours
    torch.testing.assert_close(alone[0], many[1], rtol=1e-4, atol=1e-4)
    assert (many[:, 0] - many[:, 1]).abs().amax() > 1e-3
    assert torch.equal(many, sampler.generate(_cond([0, 1, 2]), cfg, show_progress=False))
    other = sampler.generate(_cond([0, 1, 2]), validated_update(cfg, {"seed": 24}), show_progress=False)
    assert (other - many).abs().amax() > 1e-3


# -- the stages on a tiny run ---------------------------------------------------------------------
OVERRIDES = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "imageflownet.unet.channels=[4,8]",
             "imageflownet.unet.norm_groups=2", "imageflownet.recon.train.max_steps=2",
             "imageflownet.recon.train.batch_size=4", "imageflownet.train.max_steps=2",
             "imageflownet.train.batch_size=4", "imageflownet.solver_steps=2",
             "imageflownet.sampling_steps=2", "sampling.k=2"]
DIRS = {"cond": "cond_imageflownet"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run (cohort) with both ImageFlowNet stages trained."""
    run = RunDir(tmp_path_factory.mktemp("imageflownet") / "run")
    write_tiny_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=OVERRIDES)
    save_config(config, run.path / "config.yaml")
    ae_stage.run_stage(config, run)
    sde_stage.run_stage(config, run)
    return run, config


def test_the_stages_write_their_files_and_the_sampler_reads_them(tiny_run):
    run, config = tiny_run
    spec = methods.get("imageflownet")
    for stage in spec.trains:
        assert all((run.stage(stage.folder) / f).is_file() for f in stage.files)
    ae_info = json.loads((run.stage("autoencoder_imageflownet") / "run_info.json").read_text())
    assert ae_info["complete"] and ae_info["steps"] == 2 and ae_info["crops"] == 8  # 4 pairs, train
    assert json.loads((run.stage("autoencoder_imageflownet") / "model.json").read_text())["parts"] == [
        "encoder", "decoder"]
    info = json.loads((run.stage("cond_imageflownet") / "run_info.json").read_text())
    assert info["complete"] and info["autoencoder_dir"] == "autoencoder_imageflownet"
    assert len(info["diffusion_scales"]) == 3
    sampler = ImageFlowNetSampler.from_run(run, DIRS, config)
    assert methods.sampler_steps(config, spec) == 2 and sampler.latent_shape == (1, SIZE, SIZE)
    cohort = Cohort(run.stage("cohort"))
    pairs = cohort.pairs("test")
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]), [])
    latents = sampler.generate(cond, methods.sampling_of(config, spec), show_progress=False)
    assert latents.shape == (2, 2, 1, SIZE, SIZE)
    crops = sampler.decode(latents[:, 0])
    assert crops.shape == (2, SIZE, SIZE) and np.isfinite(crops).all() and crops.min() >= WINDOW[0]
    assert sampler.info()["sampler"] == "euler_maruyama"
    with pytest.raises(FileExistsError, match="already trained"):
        sde_stage.run_stage(config, run)


def test_missing_or_damaged_files_are_one_line_errors(tiny_run, tmp_path):
    run, config = tiny_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    weights = copy.stage("cond_imageflownet") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(RunFileError, match="model.safetensors") as found:
        ImageFlowNetSampler.from_run(copy, DIRS, config)
    assert "\n" not in str(found.value)
    weights.unlink()
    with pytest.raises(RunFileError, match="model.safetensors: missing"):
        ImageFlowNetSampler.from_run(copy, DIRS, config)
    (copy.stage("cond_imageflownet") / "model.json").write_text("{not json")
    with pytest.raises(RunFileError, match="model.json"):
        ImageFlowNetSampler.from_run(copy, DIRS, config)
    (copy.stage("cond_imageflownet") / "run_info.json").unlink()
    with pytest.raises(RunFileError, match="did not finish"):
        ImageFlowNetSampler.from_run(copy, DIRS, config)
    (copy.stage("autoencoder_imageflownet") / "model.safetensors").unlink()
    with pytest.raises(RunFileError, match="autoencoder_imageflownet/model.safetensors: missing"):
        sde_stage.run_stage(config, copy, overwrite=True)


def test_the_paper_preset_loads_and_sizes_on_meta_tensors():
    config = load_config("paper")
    cfg = config.imageflownet
    assert cfg.diffusion_init == 0.5 and cfg.sampling_steps == 20 and cfg.solver_steps == 20
    assert cfg.train.lr == 1e-4 and cfg.train.schedule == "cosine" and cfg.train.ema_decay
    assert stage_train_config(config) is cfg.train
    trainable, frozen, loss, note = sizing_parts(config, 2)
    value = loss()
    assert value.device.type == "meta" and "SDEs" in note
    assert all(p.requires_grad for m in trainable for p in m.parameters())
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
