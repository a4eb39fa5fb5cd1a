"""Noise schedules and the U-Net call shared by training and sampling (paper 2.1, 3.3.2).

Training uses diffusers' DDPMScheduler (forward process z_t = sqrt(abar_t) z + sqrt(1-abar_t) eps
and its betas); sampling uses DDIM (paper: 50 steps, eta = 0) or DPM-Solver++ built from the
very same training schedule (the stage folders store it, scheduler/scheduler_config.json).

Schedule: T = 1000, beta from 8.5e-4 to 1.2e-2. The paper calls it 'linear'; the authors'
CompVis-lineage code takes linspace over sqrt(beta) and squares it, which diffusers calls
'scaled_linear'. `diffusion.beta_schedule` chooses; the default follows the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from namd.config import DiffusionConfig, SamplingConfig
from namd.config.diffusion import check_sampling_steps
from namd.run.readers import read_json, reading

SCHEDULER_DIR = "scheduler"


def training_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The forward process of both stages (epsilon prediction, no sample clipping)."""
    if cfg.beta_end <= cfg.beta_start:
        raise ValueError(f"diffusion.beta_end ({cfg.beta_end}) must exceed beta_start ({cfg.beta_start})")
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)


def save_scheduler(scheduler: DDPMScheduler, stage_dir: Path) -> None:
    """Store the training schedule beside the U-Net, so sampling never re-derives it."""
    scheduler.save_pretrained(Path(stage_dir) / SCHEDULER_DIR)


def load_scheduler_config(stage_dir: Path) -> dict[str, Any]:
    """The training schedule a stage was trained with (RunFileError when missing or damaged)."""
    folder = Path(stage_dir) / SCHEDULER_DIR
    read_json(folder / "scheduler_config.json")
    with reading(folder / "scheduler_config.json"):
        return dict(DDPMScheduler.load_config(folder))


def sampling_scheduler(train_config: dict[str, Any], cfg: SamplingConfig) -> SchedulerMixin:
    """A fresh sampler over the training schedule, with cfg.steps timesteps set.

    DDIM follows the CompVis sampler (no clipping, alpha_prev of the final step =
    alphas_cumprod[0], 'leading' spacing + 1). DPM-Solver++ is diffusers' multistep solver, a
    deterministic alternative that needs fewer steps (its own 'linspace' spacing; the DDIM
    spacing settings do not apply to it). Multistep solvers keep state, so every
    batch needs its own instance: call this once per batch.
    """
    if cfg.scheduler == "ddim":
        sched = DDIMScheduler.from_config(train_config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=cfg.steps_offset,
                                          timestep_spacing=cfg.timestep_spacing)
    else:
        if cfg.eta:
            raise ValueError("sampling.eta applies to DDIM only; DPM-Solver++ is deterministic")
        sched = DPMSolverMultistepScheduler.from_config(
            train_config, algorithm_type="dpmsolver++", solver_order=cfg.solver_order,
            timestep_spacing="linspace", steps_offset=0)  # diffusers' defaults for this solver
    check_sampling_steps(cfg, int(sched.config.num_train_timesteps))  # else an IndexError mid-loop
    sched.set_timesteps(cfg.steps)
    return sched


def unet_input(noisy: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    """The U-Net input: the noisy follow-up latent, then (stage 2) the baseline latent along
    channels (Equation 10, 'hybrid' conditioning: 4 + 4 = 8 channels)."""
    return noisy if baseline is None else torch.cat([noisy, baseline], dim=1)


def model_output(unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """The U-Net's prediction for z_t: epsilon_theta(z_t, t, C) (Equation 9) or
    epsilon_theta(z1, z_t, t, C) (Equation 10), or v with diffusion.prediction_type =
    v_prediction; the schedulers read which from the stage's saved schedule."""
    return unet(unet_input(noisy, baseline), timesteps, encoder_hidden_states=context).sample


def training_target(scheduler: DDPMScheduler, z: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict: the noise (paper) or v = sqrt(abar) eps - sqrt(1-abar) z
    (Salimans and Ho 2022)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(z, noise, timesteps)
    return noise


def as_epsilon(output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor,
               alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise a model output implies (eps = sqrt(abar) v + sqrt(1-abar) z_t for v), so that
    models of either parameterisation are compared on the same noise-prediction error."""
    if prediction_type == "epsilon":
        return output
    a = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, *([1] * (noisy.dim() - 1)))
    return a.sqrt() * output + (1 - a).sqrt() * noisy
