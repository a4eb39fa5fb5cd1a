"""`namd train cond --method corrflownet_ode`: the CorrFlowNet-style background-aligned rectified
flow (Wu et al., arXiv 2511.18185; only the abstract is public), RUN/cond_corrflownet.

Reads RUN/autoencoder_corrflownet frozen and encodes every train and val pair once, before
training (posterior means; under each of the paper's rotations when
corrflownet.train.rotation_augment, one drawn per pair and step for both crops), scaled by one
factor, 1 / std of the training pairs' upright latents (as SD's scale factor: unit-variance
latents suit any velocity network). Then the flow of namd.models.corrflownet.flow_loss: from the
baseline's latent (not from noise) to the follow-up's along the straight line, v(z_t, t) (with
z_b concatenated under corrflownet.condition_on_baseline), on the shared trainer; the val pairs' flow MSE picks the checkpoint. One flow serves both rows:
the ODE and the SDE sampler (corrflownet.sampling_steps and corrflownet.sde_scale are sampling
settings this stage ignores).

Writes flow.json (the network's config, latent shape and scale, the conditioning), flow.safetensors,
checkpoints/, log.csv and run_info.json (with the sha256 of the autoencoder it was trained on).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import UNet2DModel

from namd.cohort.imaging import ROTATIONS, rotate
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.config.corrflownet import CorrFlowNetConfig
from namd.models.corrflownet import (
    AE_WEIGHTS,
    CorrAutoencoder,
    build_flow,
    flow_loss,
    load_autoencoder,
    save_flow,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, file_sha256
from namd.training.corrflownet_ae import CropPairs
from namd.training.diffusion import pick_rotation
from namd.training.stage import check_out, fit_stage
from namd.training.trainer import Batch, Trainer

METHOD = "corrflownet_ode"


@torch.no_grad()
def encode_means(ae: CorrAutoencoder, x: torch.Tensor, rotations: tuple[int, ...], batch: int = 64) -> torch.Tensor:
    """Posterior means (n, R, C, h, w) of crops x (n, 1, H, W) in [-1, 1] under each rotation."""
    slots = []
    for angle in rotations:
        parts = [ae.encode(rotate(x[s:s + batch], [angle] * len(x[s:s + batch])))[0]
                 for s in range(0, len(x), batch)]
        slots.append(torch.cat(parts))
    return torch.stack(slots, 1)


class LatentPairs:
    """Scaled baseline and follow-up latents of a split's pairs (n, R, C, h, w) as a BatchSource."""

    def __init__(self, zb: torch.Tensor, zf: torch.Tensor):
        self.zb, self.zf = zb, zf

    def __len__(self) -> int:
        return len(self.zb)

    def batch(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices)
        return {"zb": self.zb[idx], "zf": self.zf[idx]}


class FlowTask:
    """The TrainTask of the rectified flow: the velocity network trains (the autoencoder ran once
    before training and is not part of the step)."""

    def __init__(self, net: UNet2DModel, cfg: CorrFlowNetConfig):
        self.net, self.cfg = net, cfg
        self.select_on = ("mse", "min")

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"flow": self.net}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow MSE of one batch, one rotation per pair for both latents."""
        zb, zf = pick_rotation([batch["zb"], batch["zf"]], generator, train and self.cfg.train.rotation_augment)
        return flow_loss(self.net, zb, zf, generator, self.cfg)


def read_autoencoder(run: RunDir, config: NamdConfig, folder: str) -> CorrAutoencoder:
    """The finished autoencoder stage, agreeing with the config (one-line errors)."""
    path = run.require(folder, "train cond --method corrflownet_ode")
    if not run.is_done(folder):
        raise RunFileError(path / RUN_INFO, "missing or not complete: run `namd train autoencoder "
                           "--method corrflownet_ode` first")
    run.agree(config, folder)
    return load_autoencoder(path)[0]


def latent_pairs(ae: CorrAutoencoder, cohort: Cohort, split: str, config: NamdConfig,
                 rotations: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unscaled latents (zb, zf) of a split's pairs, or None when it has none."""
    pairs = cohort.pairs(split)
    if not len(pairs):
        return None
    crops = CropPairs(cohort, pairs, tuple(config.data.window_hu))
    return encode_means(ae, crops.xb, rotations), encode_means(ae, crops.xf, rotations)


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, stage: str = "cond",
              resume: bool = False, overwrite: bool = False) -> Path:
    """Train RUN/cond_corrflownet on RUN/autoencoder_corrflownet's latents; returns the folder."""
    if stage != "cond":
        raise ValueError(f"namd.training.corrflownet trains the cond stage, not {stage!r}")
    spec = methods.get(method)
    name, dirs, cfg = spec.stage("cond").folder, spec.uses, config.corrflownet
    tcfg = cfg.train
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    ae = read_autoencoder(run, config, dirs["autoencoder"])
    cohort = Cohort(run.require("cohort", "train cond"))
    rotations = ROTATIONS if tcfg.rotation_augment else (0,)
    train = latent_pairs(ae, cohort, "train", config, rotations)
    if train is None:
        raise ValueError(f"{cohort.path}: the train split has no pairs")
    val = latent_pairs(ae, cohort, "val", config, rotations)
    scale = float(1.0 / torch.cat([train[0][:, 0], train[1][:, 0]]).std().clamp_min(1e-6))
    _, _, c, h, w = train[0].shape
    net = build_flow(cfg.flow, latent_channels=c, sample_size=h, conditioned=cfg.condition_on_baseline,
                     seed=tcfg.seed)
    acc = Accelerator(mixed_precision=tcfg.mixed_precision)
    task = FlowTask(net, cfg)
    result = fit_stage(Trainer(tcfg, out, accelerator=acc), task,
                       LatentPairs(train[0] * scale, train[1] * scale),
                       LatentPairs(val[0] * scale, val[1] * scale) if val is not None else None,
                       out, acc, resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        ae_sha = file_sha256(run.stage(dirs["autoencoder"]) / AE_WEIGHTS)
        save_flow(task.net.cpu(), cfg.flow, out, latent_shape=[c, h, w], latent_scale=scale,
                  condition_on_baseline=cfg.condition_on_baseline, t_sampling=cfg.t_sampling,
                  autoencoder_sha256=ae_sha)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, autoencoder_dir=dirs["autoencoder"],
                      autoencoder_sha256=ae_sha, latent_shape=[c, h, w], latent_scale=scale,
                      steps=result.steps, best_step=result.best_step, best_val=best_val,
                      train_plan=result.plan, rotations=list(rotations))
    return out
