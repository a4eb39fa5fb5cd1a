"""`namd train prior` and `namd train cond`: the two latent diffusion stages (paper 3.3.2) on
the shared trainer.

prior (Equation 9): every train-split crop (baseline, follow-up and unpaired) with the null
    context; writes RUN/prior (RUN/prior_no_align with --method no_align).
cond (Equation 10): train-split pairs; the U-Net starts from the prior with conv_in widened
    4 -> 8 (new channels zero) and is trained together with the context encoder's soft prompts
    (the language model stays frozen); writes RUN/cond (cond_no_align, or cond_null_context for the
    image-only ablation whose context is null in training and sampling).

Both read the frozen VAE's latents from the cache of namd.training.latents (one rotation drawn
per item and step from the step generator, the same for both crops of a pair). Each stage folder
holds: unet/ (diffusers, safetensors), scheduler/ (the training noise schedule), checkpoints/,
log.csv, run_info.json; cond also context_encoder.safetensors (soft prompts),
context_encoder.json (the text config, D and m) and baseline_use.json (what the baseline buys
the trained model on the validation pairs, namd.evaluation.baseline_use). The
validation-selected checkpoint is exported. Both stages predict the noise (paper) or v
(`diffusion.prediction_type`); the saved schedule tells the samplers which.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save

import namd.models.context as context_module
import namd.models.context_factory as context_factory
from namd.cohort.store import Cohort
from namd.config import NamdConfig, TrainConfig, methods
from namd.config.preflight import check_sd15, check_stage
from namd.evaluation.baseline_use import BASELINE_USE_FILE
from namd.models.context_factory import ENCODER_FILE, PROMPTS_FILE
from namd.models.foundation import check_fits, started_from
from namd.models.null_context import save_null, stage_one_context
from namd.models.schedules import (
    load_scheduler_config,
    model_output,
    save_scheduler,
    training_scheduler,
    training_target,
)
from namd.models.token_text import build_token_encoder, token_spec
from namd.models.unet import (
    build_unet,
    load_pretrained_into,
    load_unet,
    save_unet,
    transfer_weights,
)
from namd.models.vae import vae_fingerprint
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_bytes, atomic_write_json
from namd.training.latents import LatentStore
from namd.training.stage import check_out, fit_stage, latent_store, split_rows
from namd.training.trainer import Batch, Trainer

log = logging.getLogger(__name__)


# -- data -----------------------------------------------------------------------------------------
class LatentCrops:
    """BatchSource of single crops: {"z": (B, R, C, h, w)} scaled latents under every rotation."""

    def __init__(self, store: LatentStore, crop_indices: np.ndarray):
        self.store = store
        self.rows = np.asarray(crop_indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray) -> Batch:
        return {"z": self.store.all_rotations(self.rows[indices])}


class LatentPairs:
    """BatchSource of pairs: {"z1", "z2": (B, R, C, h, w), "ehr": list of EHR}."""

    def __init__(self, store: LatentStore, pairs: pd.DataFrame):
        self.store = store
        self.base = pairs["baseline_index"].to_numpy(np.int64)
        self.follow = pairs["followup_index"].to_numpy(np.int64)
        self.ehrs = [Cohort.ehr(row) for _, row in pairs.iterrows()]

    def __len__(self) -> int:
        return len(self.base)

    def batch(self, indices: np.ndarray) -> Batch:
        return {"z1": self.store.all_rotations(self.base[indices]),
                "z2": self.store.all_rotations(self.follow[indices]),
                "ehr": [self.ehrs[i] for i in indices]}  # type: ignore[dict-item]


def pick_rotation(stacks: list[torch.Tensor], generator: torch.Generator, augment: bool) -> list[torch.Tensor]:
    """One rotation per item, drawn once and applied to every stack (baseline and follow-up of
    a pair turn together); slot 0 (no rotation) without augmentation."""
    n, slots = stacks[0].shape[0], stacks[0].shape[1]
    choice = (torch.randint(slots, (n,), generator=generator) if augment
              else torch.zeros(n, dtype=torch.long))
    rows = torch.arange(n)
    picked = [s[rows, choice.to(s.device)] for s in stacks]
    if augment and any(bool(torch.isnan(p).any()) for p in picked):  # a crop outside the training split
        raise ValueError("a rotated latent was drawn for a crop the cache holds upright only: "
                         "augmentation reads the training split alone")
    return picked


def noised(scheduler: DDPMScheduler, z: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_t, t, eps): the forward process at a uniform random timestep (Ho et al., 2020)."""
    noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
    t = torch.randint(scheduler.config.num_train_timesteps, (z.shape[0],), generator=generator).to(z.device)
    return scheduler.add_noise(z, noise, t), t, noise


def noise_mse(pred: torch.Tensor, target: torch.Tensor, scheduler: DDPMScheduler, t: torch.Tensor,
              snr_gamma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, plain MSE): || eps - eps_theta ||^2 (Equations 9-10; v for v-prediction), the loss
    optionally min-SNR weighted (Hang et al. 2023: min(SNR_t, gamma) / SNR_t for epsilon,
    / (SNR_t + 1) for v, as diffusers' training examples; beyond the paper, None = off). The
    weighting changes only how timesteps are balanced, not the optimum of each term."""
    err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if snr_gamma is None:
        return err.mean(), err.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t).to(err)
    v = scheduler.config.prediction_type == "v_prediction"
    return (err * torch.clamp(snr, max=snr_gamma) / (snr + 1 if v else snr)).mean(), err.mean()


# -- tasks ----------------------------------------------------------------------------------------
class PriorTask:
    """Equation 9: || eps - eps_theta(z_t, t, null) ||^2 over single crops."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, null_context: torch.Tensor,
                 rotate: bool, snr_gamma: float | None = None):
        self.unet, self.scheduler, self.rotate = unet, scheduler, rotate
        self.null = null_context  # (1, m, D)
        self.snr_gamma = snr_gamma

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        (z,) = pick_rotation([batch["z"]], generator, train and self.rotate)
        noisy, t, noise = noised(self.scheduler, z, generator)
        context = self.null.to(z.device).expand(z.shape[0], -1, -1)
        pred = model_output(self.unet, noisy, t, context)
        loss, mse = noise_mse(pred, training_target(self.scheduler, z, noise, t), self.scheduler, t,
                              self.snr_gamma if train else None)
        return loss, {"mse": float(mse.detach())}


class PromptParameters(torch.nn.Module):
    """The context encoder's trainable parameters (soft prompts) as a module of their own.

    The same Parameter objects, so the optimiser updates the encoder, while checkpoints and EMA
    copies hold only these tensors, never the frozen language model.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = torch.nn.ParameterList([p for _, p in named])


class CondTask:
    """Equation 10: || eps - eps_theta(z1, z2_t, t, C) ||^2 over pairs; C from the encoder (with
    gradients into its soft prompts), the null context (ablation), or dropped to null with
    probability `dropout` per pair (classifier-free guidance; 0 in the paper).

    `draws` > 1 scores every pair of a training batch under that many independent (rotation,
    timestep, noise) draws, with the pair's C computed once: more U-Net samples per
    language-model pass (the frozen LM's forward and backward to the soft prompts dominates a
    CPU step), the same expectation as Equation 10. Validation uses one draw per pair.

    `prompt_steps` (None: every step, the paper): the soft prompts train with the U-Net in the
    first `prompt_steps` optimizer steps only; from then on they stay as they are and each
    record's C is computed once, without gradients, and reused (a ContextCache of one record
    per pass, so a resumed run reads the same C as an uninterrupted one).
    """

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler,
                 encoder: context_module.ContextEncoder, null_context: bool, rotate: bool,
                 dropout: float = 0.0, draws: int = 1, snr_gamma: float | None = None,
                 prompt_steps: int | None = None):
        self.unet, self.scheduler, self.encoder = unet, scheduler, encoder
        self.use_null, self.rotate, self.dropout = null_context, rotate, dropout
        self.draws, self.snr_gamma, self.prompt_steps = draws, snr_gamma, prompt_steps
        self.prompts = PromptParameters(encoder)
        self._null: torch.Tensor | None = None  # the image-only model's constant C, once computed
        self._frozen: context_module.ContextCache | None = None  # C once the prompts are frozen

    def at_step(self, step: int) -> None:
        """Freeze the soft prompts before optimizer step `prompt_steps` (0-based): they get no
        gradient after it (AdamW skips a parameter without one), and C comes from the cache."""
        if self._frozen is None and self.prompt_steps is not None and step >= self.prompt_steps:
            self._frozen = context_module.ContextCache(self.encoder, batch_size=1)

    def trainable(self) -> dict[str, torch.nn.Module]:
        if self.use_null or not self.prompts.names:
            return {"unet": self.unet}
        return {"unet": self.unet, "prompts": self.prompts}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def context(self, ehrs: list, generator: torch.Generator, train: bool, device: torch.device) -> torch.Tensor:
        """C for a batch of records, with condition dropout when training (the null context,
        a language-model pass with diffusion.null_context = empty_prompt, only when used)."""
        if self.use_null:  # the image-only model trains no prompts: its null C is a constant
            if self._null is None:
                with torch.no_grad():
                    self._null = self.encoder.null_context(1, device=device)
            return self._null.to(device).expand(len(ehrs), -1, -1)
        c = (self.encoder if self._frozen is None else self._frozen)(ehrs).to(device)
        if train and self.dropout > 0:
            drop = (torch.rand(len(ehrs), generator=generator) < self.dropout).to(device)
            if drop.any():  # an empty-prompt null C is a language-model pass: only when used
                with torch.set_grad_enabled(self._frozen is None):  # frozen prompts: no gradient
                    null = self.encoder.null_context(1, device=device)
                c = torch.where(drop[:, None, None], null, c)
        return c

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        r = self.draws if train else 1
        stacks = [batch["z1"], batch["z2"]] if r == 1 else [batch["z1"].repeat_interleave(r, 0),
                                                          batch["z2"].repeat_interleave(r, 0)]
        z1, z2 = pick_rotation(stacks, generator, train and self.rotate)
        noisy, t, noise = noised(self.scheduler, z2, generator)
        context = self.context(batch["ehr"], generator, train, z2.device)  # type: ignore[arg-type]
        if r > 1:
            context = context.repeat_interleave(r, 0)
        pred = model_output(self.unet, noisy, t, context, baseline=z1)
        loss, mse = noise_mse(pred, training_target(self.scheduler, z2, noise, t), self.scheduler, t,
                              self.snr_gamma if train else None)
        return loss, {"mse": float(mse.detach())}


# -- the stages -----------------------------------------------------------------------------------


def _place(encoder: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move the context encoder; quantised models stay where they were loaded (their own
    device map), only the trainable tensors move."""
    try:
        encoder.to(device)
    except (ValueError, RuntimeError):
        for p in encoder.parameters():
            if p.requires_grad:
                p.data = p.data.to(device)
    return encoder.eval()


def _prior(config: NamdConfig, cohort: Cohort, store: LatentStore, dim: int, null: torch.Tensor,
           seed: int) -> tuple[PriorTask, LatentCrops, LatentCrops | None, dict]:
    """Prior task (random init or SD1.5 weights) and its data: all crops of train / val."""
    c, h, _ = store.shape
    unet = build_unet(config.diffusion.unet, in_channels=c, out_channels=c,
                      cross_attention_dim=dim, sample_size=h, seed=seed)
    report = load_pretrained_into(unet, config.diffusion.unet)
    train = split_rows(cohort.crops("train"), "crops", "train", True)
    val = split_rows(cohort.crops("val"), "crops", "val", False)
    task = PriorTask(unet, training_scheduler(config.diffusion), null, config.diffusion.prior.rotation_augment,
                     config.diffusion.snr_gamma)
    return (task, LatentCrops(store, train["crop_index"].to_numpy()),
            None if val is None else LatentCrops(store, val["crop_index"].to_numpy()),
            {"pretrained": report.as_dict() if report else None,
             "foundation": started_from(config.diffusion.unet.pretrained)})


def _from_prior(config: NamdConfig, run: RunDir, prior_name: str, unet: UNet2DConditionModel) -> dict:
    """Start the conditional U-Net from the run's prior (NAMD): conv_in widened, new zero."""
    prior_dir = run.require(prior_name, "train cond")
    if not run.is_done(prior_name):
        raise FileNotFoundError(f"{prior_dir} is not finished: run `namd train prior` first")
    trained = load_scheduler_config(prior_dir).get("prediction_type", "epsilon")
    if trained != config.diffusion.prediction_type:
        raise ValueError(f"{prior_dir} predicts {trained}, but diffusion.prediction_type is "
                         f"{config.diffusion.prediction_type}: retrain the prior (--overwrite)")
    report = transfer_weights(load_unet(prior_dir).state_dict(), unet,
                              min_share=config.diffusion.unet.min_transferred,
                              what=f"{prior_name} -> cond")
    return {"from_prior": report.as_dict(), "prior_dir": prior_name}


def _from_pretrained(config: NamdConfig, unet: UNet2DConditionModel) -> dict:
    """Start the conditional U-Net from the pretrained U-Net itself (SD1.5's row: SD1.5's
    weights, or the CPU presets' foundation), conv_in widened, new channels zero."""
    report = load_pretrained_into(unet, config.diffusion.unet)
    return {"pretrained": report.as_dict() if report else None,
            "foundation": started_from(config.diffusion.unet.pretrained)}


def _prompt_steps(config: NamdConfig) -> int | None:
    """After how many cond steps the context encoder freezes (diffusion.prompt_steps): the soft
    prompts' language-model passes are what it saves; the structured encoder's MLP is cheap and
    trains at every step (None)."""
    return None if config.text.encoder == "structured" else config.diffusion.prompt_steps


def _cond(config: NamdConfig, run: RunDir, prior_name: str | None, cohort: Cohort,
          store: LatentStore, encoder: context_module.ContextEncoder, null_context: bool,
          seed: int) -> tuple[CondTask, LatentPairs, LatentPairs | None, dict]:
    """Cond task (the prior's weights, or the pretrained U-Net's when `prior_name` is None,
    conv_in widened) and its data: pairs of train / val."""
    c, h, _ = store.shape
    unet = build_unet(config.diffusion.unet, in_channels=2 * c, out_channels=c,
                      cross_attention_dim=encoder.dim, sample_size=h, seed=seed,
                      pooled_context=config.diffusion.pooled_context)
    start = (_from_pretrained(config, unet) if prior_name is None
             else _from_prior(config, run, prior_name, unet))
    train = split_rows(cohort.pairs("train"), "pairs", "train", True)
    val = split_rows(cohort.pairs("val"), "pairs", "val", False)
    extra: dict = {}
    if isinstance(encoder, context_module.StandardizedContext) and not null_context:
        extra["context_standardize"] = encoder.fit([Cohort.ehr(row) for _, row in train.iterrows()])
        log.info("context standardised on %d training records: mean |C| %.3g, between-record std %.3g",
                 *(extra["context_standardize"][k] for k in ("records", "mean_abs_value",
                                                            "mean_between_record_std")))
    task = CondTask(unet, training_scheduler(config.diffusion), encoder, null_context,
                    config.diffusion.cond.rotation_augment, config.diffusion.condition_dropout,
                    config.diffusion.cond_draws, config.diffusion.snr_gamma,
                    _prompt_steps(config))
    return (task, LatentPairs(store, train), None if val is None else LatentPairs(store, val),
            {**start, **extra})


def _export(out: Path, task: PriorTask | CondTask, config: NamdConfig) -> None:
    """unet/, scheduler/ and (cond) the soft prompts and the encoder's config."""
    save_unet(task.unet, out)
    save_scheduler(task.scheduler, out)
    if isinstance(task, PriorTask):
        save_null(task.null, out)
    if isinstance(task, CondTask):
        enc = task.encoder
        state = {k: v.cpu().contiguous() for k, v in enc.trainable_state_dict().items()}
        atomic_write_bytes(out / PROMPTS_FILE, save(state, metadata={"null_context": str(task.use_null)}))
        atomic_write_json(out / ENCODER_FILE, {"text": config.text.model_dump(mode="json"),
                                               "dim": enc.dim, "n_tokens": enc.n_tokens,
                                               "null_context": task.use_null,
                                               "null_mode": enc.null_mode, **token_spec(enc)})


def run_stage(config: NamdConfig, run: RunDir, *, stage: str, method: str = methods.REFERENCE,
              resume: bool = False, overwrite: bool = False) -> Path:
    """Train `stage` ("prior" or "cond") of `method` (namd.config.methods); returns its folder.

    The method's table entry gives the folders (no_align: on the ablation VAE, RUN/vae_no_align,
    RUN/prior_no_align, ...) and its flags (null_context: image-only conditioning, cond only);
    `resume`: continue an interrupted training; `overwrite`: retrain a finished or interrupted
    one from scratch.
    """
    if stage not in ("prior", "cond"):
        raise ValueError(f"namd.training.diffusion trains prior or cond, not {stage!r}")
    check_stage(config, stage)  # external files, before anything is written
    spec = methods.get(method)
    if spec.flags.get("sd15"):
        check_sd15(config)
    name, dirs = spec.stage(stage).folder, spec.uses
    null_context = bool(spec.flags.get("null_context")) and stage == "cond"
    prior = dirs.get("prior") if stage == "cond" else None  # None: from the pretrained U-Net
    tcfg: TrainConfig = getattr(config.diffusion, stage)
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    # frozen soft prompts leave the loss: DDP must then look for parameters without a gradient
    unused = stage == "cond" and _prompt_steps(config) is not None
    acc = Accelerator(mixed_precision=tcfg.mixed_precision, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)] if unused else None)
    for read in (dirs["vae"], *((prior,) if prior else ())):
        run.agree(config, read)  # the stages it builds on were trained under this config
    cohort = Cohort(run.require("cohort", f"train {stage}"))
    if stage == "prior" or (stage == "cond" and prior is None):
        check_fits(config, cohort.meta)
    store = latent_store(config, run, dirs["vae"], acc)
    if stage == "prior":  # its null context needs only (m, D): the language model stays unloaded
        null = stage_one_context(config, context_factory.context_shape(config.text))
        task, train, val, extra = _prior(config, cohort, store, null.shape[-1], null, tcfg.seed)
    else:
        encoder = (build_token_encoder(config) if spec.flags.get("sd15") else
                   context_factory.build_context_encoder(config.text, config.diffusion.null_context)).eval()
        # the image-only ablation runs the encoder only for the empty sentence
        if not null_context or config.diffusion.null_context == "empty_prompt":
            _place(encoder, acc.device)
        task, train, val, extra = _cond(config, run, prior, cohort, store, encoder,
                                        null_context, tcfg.seed)
    result = fit_stage(Trainer(tcfg, out, accelerator=acc), task, train, val, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        _export(out, task, config)
        if isinstance(task, CondTask) and prior and val is not None and len(val) >= 2:
            from namd.evaluation.baseline_use import measure_cond_stage, summary_line

            use = measure_cond_stage(task, run.stage(prior), val, tcfg.seed)
            atomic_write_json(out / BASELINE_USE_FILE, use)
            log.info("%s: %s", name, summary_line(use))
            extra["baseline_use"] = {k: use[k] for k in ("ratio", "ratio_to_prior",
                                                         "x0_nearest_own_baseline")}
        best_val = result.best_val if math.isfinite(result.best_val) else None
        run.mark_done(name, config, tcfg.seed, vae_dir=dirs["vae"],
                      vae_fingerprint=vae_fingerprint(run.stage(dirs["vae"])),
                      latent_fingerprint=store.fingerprint, scale_factor=store.scale_factor,
                      latent_shape=list(store.shape), null_context=null_context,
                      condition_dropout=config.diffusion.condition_dropout, steps=result.steps,
                      best_step=result.best_step, best_val=best_val, train_plan=result.plan, **extra)
    return out
