"""`namd train cond --method ddlcxr`: DDL-CXR's conditional latent diffusion (Yao et al. 2024),
RUN/cond_ddlcxr, on the shared trainer.

One stage, from scratch (no prior: the source trains its LDM directly): the U-Net, with the
baseline latent concatenated to the noisy follow-up latent, and the record transformer whose
tokens feed its cross-attention are trained together on the train-split pairs with the
three-term loss of namd.models.ddlcxr (eps MSE, or v's at CPU size, the label head's BCE on the
CLS token against the pair's label, the triplet hinge against a noise-blended record, ramped in
by epochs). The
latents are the label-supervised VAE's (RUN/vae_ddlcxr), from the latent cache of
namd.training.latents: posterior means, scaled by the VAE's 1 / std (project's choice: the
source samples the posterior and keeps scale 1.0; with its KL weight of 1e-6 the posterior is
nearly a point, and unit-variance latents suit a DDPM's N(0, I) end at any VAE), rotation 0
only unless ddlcxr.train.rotation_augment (the source does not rotate).

The ramp's epoch is the shared trainer's (namd.training.trainer.Trainer.batch_indices: an epoch
is len(train) // effective batch steps), told by the trainer before each optimizer step
(TrainTask.at_step), so a resumed run ramps exactly as an uninterrupted one. The validation value that
picks the checkpoint is the MSE term alone (the source monitors val/simple_loss_ema); with
ddlcxr.train.ema_decay (the paper preset: 0.9999, as its LitEma) the EMA weights are exported.

Writes unet/ (diffusers, safetensors), scheduler/ (its own DDPM schedule), record_encoder.json
and record_encoder.safetensors, checkpoints/, log.csv and run_info.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel

from namd.cohort.imaging import ROTATIONS
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.config.ddlcxr import DDLCXRConfig
from namd.models.ddlcxr import (
    RecordEncoder,
    build_unet,
    fit_standardiser,
    label_head,
    predict_both,
    ramp,
    save_record_encoder,
    three_term_loss,
    training_scheduler,
    triplet_timestep_weight,
)
from namd.models.schedules import save_scheduler, training_target
from namd.models.unet import save_unet
from namd.models.vae import vae_fingerprint
from namd.run.layout import RunDir
from namd.training.diffusion import LatentPairs, noised, pick_rotation
from namd.training.latents import LatentStore
from namd.training.stage import check_out, fit_stage, latent_store
from namd.training.trainer import Batch, Trainer

log = logging.getLogger(__name__)

METHOD = "ddlcxr"


class LabelledPairs(LatentPairs):
    """LatentPairs with each pair's label (NaN when unknown): the target image's label."""

    def __init__(self, store: LatentStore, pairs: pd.DataFrame):
        super().__init__(store, pairs)
        self.labels = torch.tensor(pd.to_numeric(pairs["label"], errors="coerce").to_numpy(np.float32))

    def batch(self, indices: np.ndarray) -> Batch:
        return {**super().batch(indices), "label": self.labels[torch.as_tensor(indices)]}


class RampClock:
    """The triplet ramp at an optimizer step: completed epochs / epochs of the trainer's plan (an
    epoch = len(train) // effective batch steps, as the trainer's batch order counts them)."""

    def __init__(self, n_train: int, steps: int, effective_batch: int):
        self.per_epoch = max(1, n_train // effective_batch)
        self.epochs = math.ceil(steps / self.per_epoch)

    def __call__(self, step: int) -> float:
        """ramp(the epoch of optimizer step `step`, epochs)."""
        return ramp(step // self.per_epoch, self.epochs)


class DDLCXRTask:
    """The TrainTask of DDL-CXR's LDM: U-Net + record encoder trained, the label head fixed."""

    def __init__(self, unet: UNet2DConditionModel, encoder: RecordEncoder, head: torch.nn.Linear,
                 scheduler: DDPMScheduler, cfg: DDLCXRConfig, clock: RampClock):
        self.unet, self.encoder, self.head, self.scheduler = unet, encoder, head, scheduler
        self.cfg, self.clock = cfg, clock
        self.weights = triplet_timestep_weight(scheduler.alphas_cumprod)
        self.last_ramp = 0.0  # the ramp of the current step; validation reports the loss at it
        self.select_on = ("mse", "min")

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "record_encoder": self.encoder}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {"label_head": self.head}

    def at_step(self, step: int) -> None:
        """The trainer's hook before each optimizer step: the ramp of that step."""
        self.last_ramp = self.clock(step)

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The three-term loss of one batch of pairs (namd.models.ddlcxr.three_term_loss)."""
        z1, z2 = pick_rotation([batch["z1"], batch["z2"]], generator, train and self.cfg.train.rotation_augment)
        noisy, t, noise = noised(self.scheduler, z2, generator)
        cls, tokens = self.encoder(batch["ehr"])  # type: ignore[arg-type]
        blend = torch.randn(tokens.shape, generator=generator).to(tokens)
        negative = tokens * (1.0 - self.cfg.blend) + blend * self.cfg.blend
        eps_pos, eps_neg = predict_both(self.unet, noisy, t, z1, tokens, negative)
        target = training_target(self.scheduler, z2, noise, t)
        return three_term_loss(eps_pos, eps_neg, target, self.head(cls)[:, 0], batch["label"].to(z2.device),
                               self.weights.to(z2.device)[t], self.last_ramp, self.cfg)


def _task(config: NamdConfig, store: LatentStore, train: pd.DataFrame, steps: int,
          acc: Accelerator) -> DDLCXRTask:
    """The networks, from scratch (seeded by ddlcxr.train.seed), the standardiser fitted on the
    training pairs' records."""
    cfg, seed = config.ddlcxr, config.ddlcxr.train.seed
    c, h, _ = store.shape
    unet = build_unet(cfg.unet, latent_channels=c, context_dim=cfg.record.d_model, sample_size=h, seed=seed)
    ehrs = [Cohort.ehr(row) for _, row in train.iterrows()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        encoder = RecordEncoder(cfg.record, fit_standardiser(ehrs))
    micro = cfg.train.grad_accum * acc.num_processes
    clock = RampClock(len(train), steps, cfg.train.batch_size * micro)
    return DDLCXRTask(unet, encoder, label_head(cfg.record, seed + 2), training_scheduler(cfg), cfg, clock)


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, stage: str = "cond",
              resume: bool = False, overwrite: bool = False) -> Path:
    """Train RUN/cond_ddlcxr on RUN/vae_ddlcxr's latents; returns the folder. `resume`: continue
    an interrupted training; `overwrite`: retrain a finished or interrupted one."""
    if stage != "cond":
        raise ValueError(f"namd.training.ddlcxr trains the cond stage, not {stage!r}")
    spec = methods.get(method)
    name, dirs, tcfg = spec.stage("cond").folder, spec.uses, config.ddlcxr.train
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=tcfg.mixed_precision)
    run.agree(config, dirs["vae"])
    cohort = Cohort(run.require("cohort", "train cond"))
    # the source does not rotate: the upright crops only (a fifth of the encoding) unless asked
    store = latent_store(config, run, dirs["vae"], acc,
                         ROTATIONS if config.ddlcxr.train.rotation_augment else (0,))
    train, val = cohort.pairs("train"), cohort.pairs("val")
    if not len(train):
        raise ValueError(f"{cohort.path}: the train split has no pairs")
    trainer = Trainer(tcfg, out, accelerator=acc)
    task = _task(config, store, train, trainer.plan(len(train)).steps, acc)
    result = fit_stage(trainer, task, LabelledPairs(store, train),
                       LabelledPairs(store, val) if len(val) else None, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        save_unet(task.unet.cpu(), out)
        save_scheduler(task.scheduler, out)
        save_record_encoder(task.encoder.cpu(), out)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, vae_dir=dirs["vae"],
                      vae_fingerprint=vae_fingerprint(run.stage(dirs["vae"])),
                      latent_fingerprint=store.fingerprint, scale_factor=store.scale_factor,
                      latent_shape=list(store.shape), steps=result.steps, best_step=result.best_step,
                      best_val=best_val, train_plan=result.plan, ramp_epochs=task.clock.epochs,
                      sampler={"steps": config.ddlcxr.sampling_steps, "eta": config.ddlcxr.sampling_eta})
    return out
