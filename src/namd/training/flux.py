"""`namd train cond --method flux`: the Flux (rectified flow) row of Table 1 on the shared
trainer; writes RUN/cond_flux.

The paper fine-tunes Flux (Labs, 2024) on the pairs and says nothing else; this follows
diffusers' Flux training examples (train_dreambooth_flux, Flux Control):

- latents: the run's plain VAE (RUN/vae_no_align, no L_align / L_pred) through the latent cache
  of namd.training.latents, scaled, one rotation per pair and step for both crops
  (pick_rotation, as NAMD's cond stage). FLUX.1's own 16-channel VAE is not loaded: at every
  size the row shares the run's 4-channel VAE, so the rows differ only in the generator.
- rectified flow: x_s = (1 - s) x_0 + s noise, target noise - x_0, MSE over the latent
  (diffusers' flow-matching loss, weighting 'logit_normal' = 1); s from the logit-normal density
  (compute_density_for_timestep_sampling, mean 0, std 1, drawn from the step's generator so a
  resumed run replays it), taken as diffusers does on the 1,000-level schedule of
  FlowMatchEulerDiscreteScheduler with the fixed flux.shift (sigmas[int(u * 1000)]).
- the baseline latent: concatenated on the channel axis before 2x2 packing and read by a
  widened x_embedder, as the Flux Control training does (namd.models.flux).
- the record: Flux's text path (T5 token states by joint attention, CLIP's pooled vector into
  the timestep embedding); frozen, so each training and validation record is encoded once,
  before training. At CPU size the embedded MiniLM stands in for both (flux.text_encoder).
- FLUX.1-schnell's layout (no guidance embedding; Apache-2.0 weights); from flux.pretrained
  when set (paper preset: required unless --from-scratch), else from scratch (CPU presets:
  there is no Flux foundation).

The folder holds transformer/ (diffusers, safetensors), scheduler/ (the flow schedule and its
shift), text_encoder.json (the text path used), checkpoints/, log.csv and run_info.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from diffusers.training_utils import compute_density_for_timestep_sampling

from namd.cohort.store import Cohort
from namd.config import ConfigError, NamdConfig, methods
from namd.config.flux import FluxConfig
from namd.models.flux import (
    SCHEDULER_DIR,
    TEXT_FILE,
    FluxText,
    build_transformer,
    flow_scheduler,
    load_pretrained_into,
    save_transformer,
    text_spec,
    velocity,
)
from namd.models.vae import vae_fingerprint
from namd.run.layout import RunDir
from namd.run.provenance import atomic_dir, atomic_write_json
from namd.training.diffusion import pick_rotation
from namd.training.latents import LatentStore
from namd.training.stage import check_out, fit_stage, latent_store, split_rows
from namd.training.trainer import Batch, Trainer

log = logging.getLogger(__name__)

METHOD = "flux"
FROM_SCRATCH_HINT = ("the paper fine-tunes Flux: point flux.pretrained at a local FLUX.1-schnell "
                     "folder (with transformer/), or pass --from-scratch")


class FluxPairs:
    """BatchSource of pairs: {"z1", "z2": (B, R, C, h, w) latents under every rotation,
    "tokens": (B, L, D), "pooled": (B, D')}: the records' text states, encoded once here."""

    def __init__(self, store: LatentStore, pairs: pd.DataFrame, text: FluxText, chunk: int = 64):
        self.store = store
        self.base = pairs["baseline_index"].to_numpy(np.int64)
        self.follow = pairs["followup_index"].to_numpy(np.int64)
        ehrs = [Cohort.ehr(row) for _, row in pairs.iterrows()]
        parts = [text.encode(ehrs[s:s + chunk]) for s in range(0, len(ehrs), chunk)]
        self.tokens = torch.cat([p[0] for p in parts])
        self.pooled = torch.cat([p[1] for p in parts])

    def __len__(self) -> int:
        return len(self.base)

    def batch(self, indices: np.ndarray) -> Batch:
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return {"z1": self.store.all_rotations(self.base[indices]),
                "z2": self.store.all_rotations(self.follow[indices]),
                "tokens": self.tokens[rows], "pooled": self.pooled[rows]}


class FluxTask:
    """Rectified flow: || (noise - x_0) - v_theta(x_s, s, baseline, record) ||^2 over pairs."""

    def __init__(self, model: torch.nn.Module, cfg: FluxConfig, rotate: bool):
        self.model, self.cfg, self.rotate = model, cfg, rotate
        self.scheduler = flow_scheduler(cfg.shift)
        self.train_sigmas = self.scheduler.sigmas.clone()  # 1,000 levels, shifted, from 1 down

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.model}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n noise levels s: logit-normal u mapped on the schedule as diffusers' examples do."""
        u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=self.cfg.logit_mean,
                                                  logit_std=self.cfg.logit_std, generator=generator)
        levels = len(self.train_sigmas)
        return self.train_sigmas[(u * levels).long().clamp(max=levels - 1)]

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z0 = pick_rotation([batch["z1"], batch["z2"]], generator, train and self.rotate)
        s = self.sigmas(z0.shape[0], generator).to(z0)
        noise = torch.randn(z0.shape, generator=generator).to(z0)
        x_s = (1 - s[:, None, None, None]) * z0 + s[:, None, None, None] * noise
        pred = velocity(self.model, x_s, z1, s, batch["tokens"], batch["pooled"])
        mse = (pred.float() - (noise - z0).float()).pow(2).flatten(1).mean(1).mean()
        return mse, {"mse": float(mse.detach())}


def check_inputs(config: NamdConfig) -> None:
    """ConfigError (one line naming the field) when the stage's local weights are missing."""
    cfg = config.flux
    if config.require_pretrained and not cfg.pretrained:
        raise ConfigError(f"flux.pretrained is unset and require_pretrained is on: {FROM_SCRATCH_HINT}")
    needed = [("flux.pretrained", cfg.pretrained)] if cfg.pretrained else []
    if cfg.text_encoder == "t5_clip":
        needed += [("flux.t5", cfg.t5), ("flux.clip", cfg.clip)]
    for field, value in needed:
        if not value:
            raise ConfigError(f"{field} is unset but flux.text_encoder is t5_clip: point it at a "
                              "local FLUX.1 folder (never downloaded), or use flux.text_encoder=shared")
        if not Path(value).expanduser().exists():
            raise ConfigError(f"{field}: {value} not found (weights are read only from local paths)")


def _data(config: NamdConfig, cohort: Cohort, store: LatentStore,
          text: FluxText) -> tuple[FluxPairs, FluxPairs | None]:
    """Train and validation pairs with their records encoded."""
    train = split_rows(cohort.pairs("train"), "pairs", "train", True)
    val = split_rows(cohort.pairs("val"), "pairs", "val", False)
    return (FluxPairs(store, train, text, config.sampling.aux_batch),
            None if val is None else FluxPairs(store, val, text, config.sampling.aux_batch))


def _task(config: NamdConfig, store: LatentStore, text: FluxText) -> tuple[FluxTask, dict]:
    """The transformer (from flux.pretrained or from scratch) and its task."""
    cfg = config.flux
    model = build_transformer(cfg.transformer, latent_channels=store.shape[0], joint_dim=text.dim,
                              pooled_dim=text.pooled_dim, seed=cfg.train.seed)
    report = load_pretrained_into(model, cfg.pretrained, cfg.min_transferred) if cfg.pretrained else None
    params = sum(p.numel() for p in model.parameters())
    log.info("Flux transformer: %.2fM parameters, %s", params / 1e6,
             "from " + str(cfg.pretrained) if cfg.pretrained else "from scratch")
    extra = {"pretrained": report.as_dict() if report else None, "parameters": params}
    return FluxTask(model, cfg, cfg.train.rotation_augment), extra


def _export(out: Path, task: FluxTask, config: NamdConfig, text: FluxText) -> None:
    """transformer/, scheduler/ and text_encoder.json."""
    save_transformer(task.model, out)
    with atomic_dir(out / SCHEDULER_DIR, overwrite=True) as tmp:
        task.scheduler.save_config(tmp)
    atomic_write_json(out / TEXT_FILE, {**text_spec(config), "dim": text.dim,
                                        "pooled_dim": text.pooled_dim})


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False, stage: str = "cond") -> Path:
    """Train the Flux row's conditional transformer (the `cond` stage of `method`); returns its
    folder. `resume`: continue an interrupted training; `overwrite`: retrain from scratch."""
    check_inputs(config)  # external files, before anything is written
    spec = methods.get(method)
    name, dirs, tcfg = spec.stage(stage).folder, spec.uses, config.flux.train
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=tcfg.mixed_precision)
    run.agree(config, dirs["vae"])
    cohort = Cohort(run.require("cohort", f"train {stage} --method {method}"))
    store = latent_store(config, run, dirs["vae"], acc)
    text = FluxText.from_spec(text_spec(config))
    train, val = _data(config, cohort, store, text)
    task, extra = _task(config, store, text)
    result = fit_stage(Trainer(tcfg, out, accelerator=acc), task, train, val, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        _export(out, task, config, text)
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, vae_dir=dirs["vae"],
                      vae_fingerprint=vae_fingerprint(run.stage(dirs["vae"])),
                      latent_fingerprint=store.fingerprint, scale_factor=store.scale_factor,
                      latent_shape=list(store.shape), shift=config.flux.shift,
                      sampling_steps=config.flux.sampling_steps, steps=result.steps,
                      best_step=result.best_step, best_val=best_val, train_plan=result.plan, **extra)
    return out
