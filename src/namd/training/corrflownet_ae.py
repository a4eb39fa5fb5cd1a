"""`namd train autoencoder --method corrflownet_ode`: the CorrFlowNet-style correlational
autoencoder (Wu et al., arXiv 2511.18185; only the abstract is public), RUN/autoencoder_corrflownet.

Trained from scratch on the train-split PAIRS (val pairs pick the checkpoint on the
reconstruction term alone, the part of the loss the flow's decoding rests on): both crops in the
data window's [-1, 1] units, one rotation per pair and step for both crops together (paper's
angles, when corrflownet.autoencoder.train.rotation_augment), the loss of
namd.models.corrflownet.autoencoder_loss (reconstructions, the latents' per-dimension
correlation rewarded, the malignancy head's BCE on the pair's label, a small KL).

Writes autoencoder.json (its config, crop size, window, latent shape), autoencoder.safetensors,
checkpoints/, log.csv and run_info.json (with the validation pairs' latent correlation and
reconstruction error of the kept weights).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator

from namd.cohort.imaging import hu_to_unit, random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.models.corrflownet import (
    CorrAutoencoder,
    autoencoder_loss,
    build_autoencoder,
    latent_size,
    pearson_per_dim,
    save_autoencoder,
)
from namd.run.layout import RunDir
from namd.training.stage import check_out, fit_stage
from namd.training.trainer import Batch, Trainer

METHOD = "corrflownet_ode"


class CropPairs:
    """A split's pairs as a BatchSource: baseline and follow-up crops in [-1, 1] (held in memory:
    the demo's pairs are a few MB) and the pair's label (NaN when unknown)."""

    def __init__(self, cohort: Cohort, pairs: pd.DataFrame, window: tuple[float, float]):
        self.xb = torch.from_numpy(hu_to_unit(cohort.images(pairs["baseline_index"]), window))[:, None]
        self.xf = torch.from_numpy(hu_to_unit(cohort.images(pairs["followup_index"]), window))[:, None]
        self.labels = torch.tensor(pd.to_numeric(pairs["label"], errors="coerce").to_numpy(np.float32))

    def __len__(self) -> int:
        return len(self.xb)

    def batch(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices)
        return {"xb": self.xb[idx], "xf": self.xf[idx], "label": self.labels[idx]}


class AutoencoderTask:
    """The TrainTask of the correlational autoencoder (all of it trains)."""

    def __init__(self, ae: CorrAutoencoder, rotation_augment: bool):
        self.ae, self.rotation_augment = ae, rotation_augment
        self.select_on = ("recon", "min")

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"autoencoder": self.ae}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder loss of one batch of pairs, both crops turned by one angle per pair."""
        xb, xf = batch["xb"], batch["xf"]
        if train and self.rotation_augment:
            angles = random_rotations(len(xb), generator)
            xb, xf = rotate(xb, angles), rotate(xf, angles)
        return autoencoder_loss(self.ae, xb, xf, batch["label"], generator)


@torch.no_grad()
def latent_report(ae: CorrAutoencoder, data: CropPairs, batch: int = 64) -> dict[str, float]:
    """Mean per-dimension correlation of the pairs' latent means and the L1 reconstruction error
    (window units) of both crops, over a split (eval mode)."""
    ae.eval()
    means, errors = [], []
    for s in range(0, len(data), batch):
        x = torch.cat([data.xb[s:s + batch], data.xf[s:s + batch]])
        mean, _ = ae.encode(x)
        means.append(mean.chunk(2))
        errors.append(float((ae.decode(mean) - x).abs().mean()) * len(x))
    zb, zf = (torch.cat([m[i] for m in means]) for i in (0, 1))
    corr = float(pearson_per_dim(zb, zf)) if len(zb) > 1 else math.nan
    return {"latent_corr": corr, "recon_l1": sum(errors) / max(2 * len(data), 1)}


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, stage: str = "autoencoder",
              resume: bool = False, overwrite: bool = False) -> Path:
    """Train RUN/autoencoder_corrflownet on the cohort's pairs; returns the folder."""
    if stage != "autoencoder":
        raise ValueError(f"namd.training.corrflownet_ae trains the autoencoder stage, not {stage!r}")
    name, cfg = methods.get(method).stage("autoencoder").folder, config.corrflownet.autoencoder
    tcfg, window = cfg.train, tuple(config.data.window_hu)
    h = latent_size(cfg, config.data.crop_size)
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=tcfg.mixed_precision)
    cohort = Cohort(run.require("cohort", "train autoencoder"))
    train, val = cohort.pairs("train"), cohort.pairs("val")
    if not len(train):
        raise ValueError(f"{cohort.path}: the train split has no pairs")
    train_data, val_data = CropPairs(cohort, train, window), CropPairs(cohort, val, window) if len(val) else None
    task = AutoencoderTask(build_autoencoder(cfg, tcfg.seed), tcfg.rotation_augment)
    result = fit_stage(Trainer(tcfg, out, accelerator=acc), task, train_data, val_data, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        ae = task.ae.cpu().eval()
        report = latent_report(ae, val_data if val_data is not None else train_data)
        save_autoencoder(ae, out, crop_size=config.data.crop_size, window_hu=list(window),
                         latent_shape=[cfg.latent_channels, h, h])
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, steps=result.steps, best_step=result.best_step,
                      best_val=best_val, train_plan=result.plan,
                      latent_shape=[cfg.latent_channels, h, h],
                      report={"split": "val" if val_data is not None else "train", **report})
    return out
