"""`namd train autoencoder --method imageflownet`: ImageFlowNet's phase 1 (Liu et al., ICASSP
2025), RUN/autoencoder_imageflownet, on the shared trainer.

The time-independent U-Net of namd.models.imageflownet learns to reconstruct: a crop with
Gaussian noise added (imageflownet.recon.noise_std, [-1, 1] window units) in, the clean crop
out, MSE (the source's reconstruction loss; its optional contrastive and feature losses are
left out). The crops are the train split's baselines, follow-ups and, with recon.unpaired, its
unpaired crops (never val or test); the val split's crops pick the checkpoint. With
recon.train.rotation_augment, each crop is rotated by an angle of the project's rotations
(namd.cohort.imaging.ROTATIONS), drawn from the step's generator.

Writes model.json and model.safetensors (the U-Net's encoder and decoder only: the SDEs belong
to the next stage, namd.training.imageflownet), checkpoints/, log.csv and run_info.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from namd.cohort.imaging import hu_to_unit, random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.config.imageflownet import ImageFlowNetReconConfig
from namd.models.imageflownet import UNET_PARTS, ImageFlowNet, build_model, save_model
from namd.run.layout import RunDir
from namd.training.stage import check_out, fit_stage
from namd.training.trainer import Batch, Trainer

METHOD = "imageflownet"


def unit_crops(cohort: Cohort, indices: np.ndarray, window: tuple[float, float]) -> torch.Tensor:
    """Crops (n, 1, H, W) in [-1, 1] window units (small enough to hold: a split's crops)."""
    return hu_to_unit(torch.from_numpy(cohort.images(indices)), window)[:, None].contiguous()


def rotated(images: list[torch.Tensor], generator: torch.Generator, on: bool) -> list[torch.Tensor]:
    """The images rotated together, one angle per item drawn from `generator` (or as they are)."""
    if not on:
        return images
    angles = random_rotations(images[0].shape[0], generator)
    return [rotate(x, angles) for x in images]


class Crops:
    """BatchSource of crops in window units: {"x": (B, 1, H, W)}."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray) -> Batch:
        return {"x": self.images[torch.as_tensor(np.asarray(indices, dtype=np.int64))]}


class ReconTask:
    """Phase 1: || U-Net(x + noise_std z) - x ||^2, the U-Net alone (no time passes)."""

    def __init__(self, model: ImageFlowNet, cfg: ImageFlowNetReconConfig):
        self.model, self.cfg = model, cfg
        self.select_on = ("mse", "min")

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.model.encoder, "decoder": self.model.decoder}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The MSE of one batch's reconstructions from noisy inputs."""
        (x,) = rotated([batch["x"]], generator, train and self.cfg.train.rotation_augment)
        noisy = x + self.cfg.noise_std * torch.randn(x.shape, generator=generator).to(x)
        mse = (self.model.reconstruct(noisy) - x).pow(2).mean()
        return mse, {"mse": float(mse.detach())}


def crop_rows(cohort: Cohort, split: str, unpaired: bool) -> np.ndarray:
    """Crop indices of a split: baselines and follow-ups, and its unpaired crops when asked."""
    kinds = ("baseline", "followup", "unpaired") if unpaired else ("baseline", "followup")
    return cohort.crops(split, kinds)["crop_index"].to_numpy(np.int64)


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False, stage: str = "autoencoder") -> Path:
    """Train the reconstruction U-Net (the `autoencoder` stage of `method`); returns its folder.
    `resume`: continue an interrupted training; `overwrite`: retrain from scratch."""
    spec = methods.get(method)
    name, cfg = spec.stage(stage).folder, config.imageflownet
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    tcfg, window = cfg.recon.train, tuple(config.data.window_hu)
    acc = Accelerator(mixed_precision=tcfg.mixed_precision)
    cohort = Cohort(run.require("cohort", f"train {stage} --method {method}"))
    train_rows, val_rows = (crop_rows(cohort, s, cfg.recon.unpaired) for s in ("train", "val"))
    if not len(train_rows):
        raise ValueError(f"{cohort.path}: the train split has no crops")
    train = Crops(unit_crops(cohort, train_rows, window))
    val = Crops(unit_crops(cohort, val_rows, window)) if len(val_rows) else None
    # its SDEs are not trained here nor saved: the next stage makes them (their scale unused)
    model = build_model(cfg.unet, cohort.crop_size, scale_init=0.0, seed=tcfg.seed)
    task = ReconTask(model, cfg.recon)
    result = fit_stage(Trainer(tcfg, out, accelerator=acc), task, train, val, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        save_model(model.cpu(), out, cohort.crop_size, UNET_PARTS)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, crops=len(train), steps=result.steps,
                      best_step=result.best_step, best_val_mse=best_val, train_plan=result.plan,
                      parameters=sum(p.numel() for m in task.trainable().values() for p in m.parameters()))
    return out
