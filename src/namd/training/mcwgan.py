"""`namd train cond --method mcwgan`: McWGAN / GP-WGAN (Wang et al., Cancers 2024), RUN/cond_mcwgan.

A deterministic predictor from the baseline crop to the follow-up crop (pixel space, the run's
HU window mapped to [-1, 1]: namd.cohort.imaging.hu_to_unit), trained against a WGAN-GP critic
(Gulrajani et al. 2017: D(fake) - D(real) + 10 (||grad D(x_hat)|| - 1)^2). The critic reads
the baseline beside the candidate follow-up (a conditional critic: inferred from the "Mc").
The predictor's loss (the source's four terms): L1 + (1 - SSIM) + the perceptual distance in the
last hidden layer of RUN/classifier_mcwgan's nodule classifier (frozen; trained on the training
split only) + the adversarial -D(fake); the weights are mcwgan.* (the source's are not in namd's
reference: the project's choice, see namd.config.mcwgan).

On the shared trainer (one AdamW over predictor and critic): each step's loss is the critic's
loss on the detached prediction plus the predictor's loss through the critic's detached
parameters, so one backward gives each network the gradient of its own objective only
(namd.models.mcwgan.gan_losses). With mcwgan.n_critic = n > 1 the predictor runs without a
graph on n - 1 of every n steps: its parameters get no gradient there and AdamW leaves them
untouched (n critic steps per predictor step, as WGAN-GP); n = 1 (CPU) is simultaneous updates.
Rotation augmentation as NAMD's (the same angle for baseline and follow-up); the checkpoint is
selected by the predictor's reconstruction loss (L1 + SSIM + perceptual) on validation pairs.

Writes predictor.json, predictor.safetensors, checkpoints/ (predictor and critic), log.csv and
run_info.json; the critic lives only in checkpoints/.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator

from namd.cohort.imaging import hu_to_unit, random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import ConfigError, NamdConfig, methods
from namd.config.mcwgan import McWGANConfig
from namd.models.mcwgan import (
    PREDICTOR,
    Critic,
    NoduleClassifier,
    Predictor,
    build_critic,
    build_predictor,
    gan_losses,
    load_classifier,
    reconstruction,
    save_network,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO
from namd.training.stage import check_out, fit_stage, split_rows
from namd.training.trainer import Batch, Trainer

log = logging.getLogger(__name__)

METHOD = "mcwgan"


class CropPairs:
    """BatchSource of pairs in [-1, 1] window units, held in memory: {"base", "follow":
    (B, 1, H, W)}."""

    def __init__(self, cohort: Cohort, pairs: pd.DataFrame, window: tuple[float, float]):
        def unit(column: str) -> torch.Tensor:
            crops = cohort.images(pairs[column].to_numpy(np.int64))
            return torch.from_numpy(hu_to_unit(crops, window)).float()[:, None]

        self.base, self.follow = unit("baseline_index"), unit("followup_index")

    def __len__(self) -> int:
        return len(self.base)

    def batch(self, indices: np.ndarray) -> Batch:
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return {"base": self.base[rows], "follow": self.follow[rows]}


class McWGANTask:
    """Predictor + conditional critic trained together; the classifier frozen. Validation (and
    the checkpoint) on the predictor's reconstruction loss."""

    select_on = ("recon", "min")

    def __init__(self, predictor: Predictor, critic: Critic, classifier: NoduleClassifier,
                 cfg: McWGANConfig):
        self.predictor, self.critic, self.classifier, self.cfg = predictor, critic, classifier, cfg
        self.update_predictor = True

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"predictor": self.predictor, "critic": self.critic}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {"classifier": self.classifier}

    def at_step(self, step: int) -> None:
        """The predictor moves on the last of every n_critic steps (each step: the critic)."""
        self.update_predictor = step % self.cfg.n_critic == self.cfg.n_critic - 1

    def loss(self, batch: Batch, generator: torch.Generator, train: bool
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training: critic loss + predictor loss (gan_losses). Validation: the predictor's
        reconstruction loss only (no critic, no gradient penalty: the trainer validates
        without autograd)."""
        base, real = batch["base"], batch["follow"]
        if train and self.cfg.train.rotation_augment:
            angles = random_rotations(len(base), generator)
            base, real = rotate(base, angles), rotate(real, angles)
        if not train:
            recon, parts = reconstruction(self.predictor(base), real, self.classifier, self.cfg)
            return recon, {"recon": float(recon), **{k: float(v) for k, v in parts.items()}}
        critic_loss, predictor_loss, terms = gan_losses(
            self.predictor, self.critic, self.classifier, base, real, generator, self.cfg,
            self.update_predictor)
        terms["critic_loss"] = critic_loss.detach()
        return critic_loss + predictor_loss, {k: float(v) for k, v in terms.items()}


def read_classifier(run: RunDir, folder: str, method: str) -> NoduleClassifier:
    """The finished classifier stage's network (frozen); one-line errors when it is not."""
    path = run.require(folder, f"train cond --method {method}")
    if not run.is_done(folder):
        raise RunFileError(path / RUN_INFO, "missing or not complete: run `namd train classifier "
                           f"--run {run.path} --method {method}` first")
    model, _ = load_classifier(path)
    return model


def _networks(cfg: McWGANConfig) -> tuple[Predictor, Critic]:
    """Predictor and critic from the stage's seed (not from what the process drew before)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        predictor = build_predictor(cfg)
        torch.manual_seed(cfg.train.seed + 1)
        critic = build_critic(cfg)
    return predictor, critic


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False, stage: str = "cond") -> Path:
    """Train RUN/cond_mcwgan against RUN/classifier_mcwgan's frozen features; returns the
    folder. `resume`: continue an interrupted training; `overwrite`: retrain."""
    spec = methods.get(method)
    own = spec.stage(stage)
    name, cfg = own.folder, config.mcwgan
    classifier_dir = own.needs[0]
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    if cfg.n_critic > 1 and acc.num_processes > 1:
        raise ConfigError("mcwgan.n_critic > 1 leaves the predictor out of some steps, which "
                          "DistributedDataParallel refuses: use one process or mcwgan.n_critic=1")
    run.agree(config, classifier_dir)
    classifier = read_classifier(run, classifier_dir, method)
    cohort = Cohort(run.require("cohort", f"train {stage} --method {method}"))
    window = tuple(config.data.window_hu)
    train = CropPairs(cohort, split_rows(cohort.pairs("train"), "pairs", "train", True), window)
    val_rows = split_rows(cohort.pairs("val"), "pairs", "val", False)
    val = None if val_rows is None else CropPairs(cohort, val_rows, window)
    predictor, critic = _networks(cfg)
    task = McWGANTask(predictor, critic, classifier, cfg)
    result = fit_stage(Trainer(cfg.train, out, accelerator=acc), task, train, val, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        save_network(predictor.cpu(), {
            "predictor": {"widths": list(cfg.predictor_widths), "residual": cfg.residual},
            "crop_size": cohort.crop_size, "window_hu": list(window)}, out, PREDICTOR)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in task.trainable().items()}
        run.mark_done(name, config, cfg.train.seed, classifier_dir=classifier_dir,
                      steps=result.steps, best_step=result.best_step, best_val=best_val,
                      selection="validation reconstruction loss (L1 + SSIM + perceptual)",
                      train_plan=result.plan, parameters=params, n_critic=cfg.n_critic,
                      n_train=len(train), n_val=0 if val is None else len(val))
    return out
