"""`namd train vae`: the nodule-aligned VAE stage (paper 3.2, Equation 6, Appendix B).

Reads RUN/cohort, trains on every train-split crop (baseline, follow-up, unpaired) with the
shared Trainer, selects the best weights by validation loss, and writes RUN/vae (RUN/vae_no_align
for the ablation): the autoencoder with its latent scale factor (1 / std of the posterior-mean
latents over the training split, computed after training), the probe, the alignment statistics,
checkpoints/ and log.csv, the report (report.json + PNGs) and run_info.json.

Multi-GPU: `accelerate launch --multi_gpu --num_processes N -m namd.cli train vae --run RUN`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from namd.cohort.imaging import random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import ConfigError, NamdConfig, VAEConfig, methods
from namd.config.preflight import check_stage
from namd.models.alignment import (
    PerceptualLoss,
    alignment_loss,
    gradient_loss,
    kl_loss,
    prediction_loss,
    reconstruction_loss,
)
from namd.models.foundation import check_fits, started_from
from namd.models.probe import LinearProbe, adaptive_weight, save_probe
from namd.models.vae import build_vae_from_config, latent_shape, save_trained_vae
from namd.models.vae_data import META_FILE, encode_source, split_source, training_statistics
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_json

log = logging.getLogger(__name__)

def perceptual_loss(cfg: VAEConfig) -> tuple[PerceptualLoss | None, str]:
    """The LPIPS network when L_LPIPS is on, and a sentence saying whether it is (the stage's
    preflight has checked that weights are given when the weight is above 0)."""
    if cfg.lambda_lpips == 0:
        log.info("L_LPIPS off: vae.lambda_lpips is 0")
        return None, "off: vae.lambda_lpips is 0"
    if not cfg.lpips_weights:
        raise ConfigError(f"vae.lambda_lpips is {cfg.lambda_lpips} but vae.lpips_weights is unset")
    return PerceptualLoss(cfg.lpips_weights), f"on: vgg weights from {cfg.lpips_weights}"


def _value(t: torch.Tensor) -> float:
    """A logged loss term as a plain float."""
    return float(t.detach())


def joint_probe(cfg: VAEConfig) -> bool:
    """Whether the probe trains with the VAE through L_pred: with L_align (NAMD) or adaptively
    weighted (DDL-CXR's label-supervised VAE, vae.pred_weight); without it (the --method no_align
    ablation, or lambda_pred = 0) it is fitted afterwards on the frozen training latents, so that
    probe_auroc always measures a trained probe."""
    return (cfg.align or cfg.pred_weight == "adaptive") and cfg.lambda_pred > 0


class VAETask:
    """The TrainTask of Equation 6: reconstruction + KL (+ LPIPS) + alignment + probe BCE."""

    def __init__(self, vae: AutoencoderKL, probe: LinearProbe, cfg: VAEConfig, augment: bool,
                 class_weights: tuple[float, float] | None, perceptual: PerceptualLoss | None = None):
        self.vae, self.probe, self.cfg, self.augment = vae, probe, cfg, augment
        self.class_weights, self.perceptual = class_weights, perceptual
        self.align_skipped = 0
        self.select_on = (cfg.select_on, "min")
        self.joint_probe = joint_probe(cfg)
        self.pred_weight = cfg.lambda_pred  # the adaptive weight of the last training batch

    def trainable(self) -> dict[str, torch.nn.Module]:
        """The autoencoder, and the probe when L_pred shapes the latent (see `joint_probe`)."""
        return {"vae": self.vae, "probe": self.probe} if self.joint_probe else {"vae": self.vae}

    def frozen(self) -> dict[str, torch.nn.Module]:
        """The LPIPS network, when on."""
        return {"lpips": self.perceptual} if self.perceptual is not None else {}

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator,
             train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """L_VAE of one batch. Training draws the rotation and the posterior sample from
        `generator` (the authors align the sampled z); validation uses the posterior mean."""
        cfg, x = self.cfg, batch["image"]
        if train and self.augment:
            x = rotate(x, random_rotations(x.shape[0], generator))
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if train else posterior.mode()
        recon = self.vae.decode(z).sample
        rec, kl = reconstruction_loss(x, recon), kl_loss(posterior.mean, posterior.logvar)
        total = rec + cfg.lambda_kl * kl
        nll = rec  # the reconstruction terms, against which an adaptive L_pred is weighted
        terms = {"rec": _value(rec), "kl": _value(kl)}
        if cfg.lambda_grad > 0:
            grad = gradient_loss(x, recon)
            total = total + cfg.lambda_grad * grad
            nll = nll + cfg.lambda_grad * grad
            terms["grad"] = _value(grad)
        if self.perceptual is not None:
            lp = self.perceptual(x, recon)
            total = total + cfg.lambda_lpips * lp
            nll = nll + cfg.lambda_lpips * lp
            terms["lpips"] = _value(lp)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.align):
            align = alignment_loss(z, batch["features"], cfg.sigma_f, cfg.sigma_z, cfg.temperature, cfg.projection)
        terms.update(align=_value(align.loss), align_n=float(align.n_used))
        if align.n_used < 2:
            self._note_skipped(align.n_used)
        if cfg.align:
            total = total + cfg.lambda_align * align.loss
        terms["loss_without_pred"] = _value(total)  # what vae.select_on may select on
        if self.joint_probe:
            pred, n_labelled = prediction_loss(self.probe(z), batch["label"], self.class_weights)
            total = total + self._weight_of_pred(nll, pred, x) * pred
            terms.update(pred=_value(pred), pred_n=float(n_labelled))
            if cfg.pred_weight == "adaptive":
                terms["pred_weight"] = float(self.pred_weight)
        return total, terms

    def _weight_of_pred(self, nll: torch.Tensor, pred: torch.Tensor,
                        x: torch.Tensor) -> float | torch.Tensor:
        """lambda_pred (NAMD), or DDL-CXR's adaptive weight x lambda_pred from this batch's
        gradients at the encoder's last convolution (validation, without gradients, reuses the
        last training batch's)."""
        if self.cfg.pred_weight == "fixed":
            return self.cfg.lambda_pred
        if torch.is_grad_enabled() and nll.requires_grad:
            layer = self.vae.encoder.conv_out.weight
            self.pred_weight = self.cfg.lambda_pred * adaptive_weight(nll, pred, layer, x[0].numel())
        return self.pred_weight

    def _note_skipped(self, n_used: int) -> None:
        """Say (once, then every 100th time) that a batch had no alignment term."""
        self.align_skipped += 1
        if self.align_skipped == 1 or self.align_skipped % 100 == 0:
            log.warning("L_align = 0 for a batch with %d crop(s) having all five nodule features "
                        "(%d such batches so far; see align_n in log.csv)", n_used, self.align_skipped)


def scale_factor(latents: np.ndarray) -> float:
    """The paper's scale factor: 1 / std of all latent elements over the training split."""
    std = float(np.asarray(latents, dtype=np.float64).std())
    if not np.isfinite(std) or std == 0:
        raise FloatingPointError(f"latent std is {std}: cannot compute the scale factor")
    return 1.0 / std


def fit_probe_post_hoc(probe: LinearProbe, latents: np.ndarray, labels: np.ndarray, seed: int) -> str:
    """For the ablation (no L_pred): fit the probe afterwards on the frozen training latents
    with a class-balanced logistic regression, so both variants ship a usable probe."""
    from sklearn.linear_model import LogisticRegression

    known = np.isfinite(labels)
    y = labels[known].astype(int)
    if len(np.unique(y)) < 2:
        return "untrained: the training split lacks one of the two classes"
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(latents[known].reshape(known.sum(), -1), y)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
        probe.linear.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    return "fitted after training on frozen latents (class-balanced logistic regression)"


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a missing number is null."""
    return float(value) if np.isfinite(value) else None


def _prepare_stage_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a fresh run into an unfinished one; --overwrite starts from scratch."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} holds an unfinished training: use --resume to continue it "
                              "or --overwrite to start again")


def run_stage(config: NamdConfig, run: RunDir, *, method: str = methods.REFERENCE,
              resume: bool = False, overwrite: bool = False) -> Path:
    """Train (or resume, or skip when finished) the VAE stage and write its folder.

    `method` (namd.config.methods): its folder, and with its no_align flag the ablation without
    L_align and L_pred (RUN/vae_no_align); `resume`: continue
    an interrupted training; `overwrite`: retrain a finished or interrupted one from scratch.
    """
    from namd.evaluation.vae_report import write_report
    from namd.run.checkpoint import load_best
    from namd.training.trainer import Trainer

    spec = methods.get(method)
    stage = spec.stage("vae")
    config = methods.stage_config(config, stage)  # the no-align VAE: vae.align = false
    cfg, name = config.vae, stage.folder
    out = run.stage(name)
    if run.is_done(name) and not overwrite:
        log.info("%s: already finished (use --overwrite to retrain)", out)
        return out
    check_stage(config, "vae")  # before anything is written
    perceptual, lpips_status = perceptual_loss(cfg)
    cohort = Cohort(run.require("cohort", "train vae"))
    check_fits(config, cohort.meta)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if cohort.crop_size % factor:
        raise ValueError(f"{cohort.path}: crop size {cohort.crop_size} is not divisible by the VAE's "
                         f"spatial factor {factor}")
    _prepare_stage_dir(out, resume=resume, overwrite=overwrite)
    stats = training_statistics(cohort.crops("train"), cfg.pred_balance)
    if stats["n_train"] == 0:
        raise ValueError(f"{cohort.path}: the train split has no crops")
    train_src = split_source(cohort, "train", config, stats)
    val_src = split_source(cohort, "val", config, stats, shuffle_seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    vae = build_vae_from_config(cfg)
    probe = LinearProbe(latent_shape(cfg, cohort.crop_size))
    task = VAETask(vae, probe, cfg, cfg.train.rotation_augment, stats["class_weights"], perceptual)
    trainer = Trainer(cfg.train, out)
    result = trainer.fit(task, train_src, val_src if len(val_src) else None,
                         resume=resume)
    if not trainer.acc.is_main_process:
        return out
    load_best(out, task.trainable())
    vae.to(trainer.acc.device)
    train_latents = encode_source(vae, train_src, cfg.train.batch_size, desc="latent scale")
    scale = scale_factor(train_latents)
    probe_status = "trained jointly (L_pred)"
    if not task.joint_probe:
        probe_status = fit_probe_post_hoc(probe, train_latents, train_src.labels, cfg.train.seed)
    vae.cpu()
    save_trained_vae(vae, out, scale, latent_std=1.0 / scale, n_train_crops=len(train_src),
                     best_step=result.best_step)
    save_probe(probe.cpu(), out)
    meta = {**stats, "projection": cfg.projection, "lpips": lpips_status, "probe": probe_status,
            "align": cfg.align, "scale_factor": scale, "best_step": result.best_step,
            "best_val_loss": _finite_or_none(result.best_val), "steps": result.steps}
    atomic_write_json(out / META_FILE, meta)
    split = "val" if len(val_src) else "train"
    if split == "train":
        log.warning("%s: no validation crops; the report describes the training split", cohort.path)
    report = write_report(out, cohort, config, split, train_latents=train_latents, train_labels=train_src.labels)
    run.mark_done(name, config, cfg.train.seed, lpips=lpips_status, probe=probe_status,
                  foundation=started_from(cfg.pretrained),
                  scale_factor=scale, best_step=result.best_step,
                  best_val_loss=_finite_or_none(result.best_val), train_plan=result.plan,
                  report=report)
    return out
