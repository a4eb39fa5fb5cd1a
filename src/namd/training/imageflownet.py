"""`namd train cond --method imageflownet`: ImageFlowNet's phase 2 (Liu et al., ICASSP 2025),
RUN/cond_imageflownet, on the shared trainer.

The reconstruction U-Net of RUN/autoencoder_imageflownet is loaded and frozen (its encoder and
decoder: the time-independent parts); fresh SDEs (namd.models.imageflownet.SDEFlow, seeded by
imageflownet.train.seed, diffusion scales at imageflownet.diffusion_init) evolve the baseline's
skip features and bottleneck over the one-year interval by imageflownet.solver_steps
Euler-Maruyama steps, with every noise draw from the step's generator (so a resumed run replays
it), and the frozen decoder reads the evolved features. Loss on the train split's pairs: MSE
between the predicted and the real follow-up (window units) + imageflownet.smoothness_weight x
the sum of the squared Frobenius norms of the drifts' conv weights (the source's "smoothness
term on the drift weights", as the project reads it). The val pairs pick the checkpoint on the
MSE alone (the SDE's noise from a fixed generator). With train.rotation_augment, baseline and
follow-up are rotated together by one of the project's angles.

Writes model.json and model.safetensors (the WHOLE model: U-Net and SDEs, all the sampler
reads), checkpoints/, log.csv and run_info.json (with the sha256 of the U-Net it started from).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator

from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.config.imageflownet import ImageFlowNetConfig
from namd.models.imageflownet import (
    ALL_PARTS,
    MODEL_FILE,
    UNET_PARTS,
    ImageFlowNet,
    generator_noise,
    load_model,
    save_model,
)
from namd.run.contract import RunFileError, command_for
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, file_sha256
from namd.training.imageflownet_ae import rotated, unit_crops
from namd.training.stage import check_out, fit_stage, split_rows
from namd.training.trainer import Batch, Trainer

METHOD = "imageflownet"


class UnitPairs:
    """BatchSource of pairs in window units: {"x1": baselines, "x2": follow-ups (B, 1, H, W)}."""

    def __init__(self, cohort: Cohort, pairs: pd.DataFrame, window: tuple[float, float]):
        self.x1 = unit_crops(cohort, pairs["baseline_index"].to_numpy(np.int64), window)
        self.x2 = unit_crops(cohort, pairs["followup_index"].to_numpy(np.int64), window)

    def __len__(self) -> int:
        return len(self.x1)

    def batch(self, indices: np.ndarray) -> Batch:
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return {"x1": self.x1[rows], "x2": self.x2[rows]}


class SDETask:
    """Phase 2: || decoder(SDE(encoder(baseline))) - follow-up ||^2 + w x smoothness; the SDEs
    train, the U-Net is frozen."""

    def __init__(self, model: ImageFlowNet, cfg: ImageFlowNetConfig):
        self.model, self.cfg = model, cfg
        self.select_on = ("mse", "min")

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"flows": self.model.flows}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.model.encoder, "decoder": self.model.decoder}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE of the forecast follow-ups (noise from `generator`) plus the smoothness term."""
        x1, x2 = rotated([batch["x1"], batch["x2"]], generator, train and self.cfg.train.rotation_augment)
        pred = self.model.forecast(x1, self.cfg.solver_steps, generator_noise(generator))
        mse = (pred - x2).pow(2).mean()
        smooth = self.model.smoothness()
        scales = self.model.scales()
        return mse + self.cfg.smoothness_weight * smooth, {
            "mse": float(mse.detach()), "smoothness": float(smooth.detach()),
            "sigma_mean": float(np.mean(scales))}


def load_unet(run: RunDir, folder: str, cfg: ImageFlowNetConfig, seed: int) -> tuple[ImageFlowNet, Path]:
    """The finished reconstruction U-Net of `folder` with fresh trainable SDEs, and its file."""
    ae_dir = run.require(folder, "train cond --method imageflownet")
    if not run.is_done(folder):
        raise RunFileError(ae_dir / RUN_INFO, "missing or not complete: the stage did not finish",
                           f"run `{command_for(run.path, folder)}` first")
    model, _ = load_model(ae_dir, UNET_PARTS)
    model.reset_flows(cfg.diffusion_init, seed)
    model.flows.requires_grad_(True).train()
    return model, ae_dir / MODEL_FILE


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False, stage: str = "cond") -> Path:
    """Train ImageFlowNet's SDEs (the `cond` stage of `method`) on its reconstruction U-Net;
    returns the folder. `resume`: continue an interrupted training; `overwrite`: retrain."""
    spec = methods.get(method)
    own = spec.stage(stage)
    name, ae_name, cfg = own.folder, own.needs[0], config.imageflownet
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    run.agree(config, ae_name)
    model, ae_file = load_unet(run, ae_name, cfg, cfg.train.seed)
    cohort = Cohort(run.require("cohort", f"train {stage} --method {method}"))
    window = tuple(config.data.window_hu)
    train = UnitPairs(cohort, split_rows(cohort.pairs("train"), "pairs", "train", True), window)
    val_rows = split_rows(cohort.pairs("val"), "pairs", "val", False)
    val = None if val_rows is None else UnitPairs(cohort, val_rows, window)
    task = SDETask(model, cfg)
    result = fit_stage(Trainer(cfg.train, out, accelerator=acc), task, train, val, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        save_model(model.cpu(), out, cohort.crop_size, ALL_PARTS, interval=1.0)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, cfg.train.seed, autoencoder_dir=ae_name,
                      autoencoder_sha256=file_sha256(ae_file), diffusion_scales=model.scales(),
                      solver_steps=cfg.solver_steps, sampling_steps=cfg.sampling_steps,
                      steps=result.steps, best_step=result.best_step, best_val_mse=best_val,
                      train_plan=result.plan)
    return out
