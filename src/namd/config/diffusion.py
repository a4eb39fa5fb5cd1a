"""The two-stage latent diffusion model and its sampler (paper 3.3.2, Appendix B and D)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import Section, TrainConfig


class UNetConfig(Section):
    """UNet2DConditionModel size (tiny defaults; paper preset = SD1.5, 320 channels)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(8, ge=1, description="SD1.5: eight heads")
    norm_num_groups: int = Field(16, ge=1)
    pretrained: str | None = Field(None, description="local SD1.5 U-Net: diffusers folder or single file")


class DiffusionConfig(Section):
    """Noise schedule shared by training and sampling.

    The paper says 'linear' from 8.5e-4 to 1.2e-2; its CompVis-lineage code takes linspace over
    sqrt(beta) and squares, which diffusers calls 'scaled_linear'. We follow the code.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 8.5e-4
    beta_end: float = 1.2e-2
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon"] = "epsilon"
    unet: UNetConfig = UNetConfig()
    prior: TrainConfig = TrainConfig(lr=1e-4, batch_size=32, max_steps=300, warmup_steps=0)
    cond: TrainConfig = TrainConfig(lr=2e-5, batch_size=16, max_steps=300)
    condition_dropout: float = Field(0.0, ge=0, lt=1, description="for classifier-free guidance; 0 = paper")


class SamplingConfig(Section):
    """K virtual follow-ups per nodule (paper: K = 20, DDIM 50 steps, eta = 0, guidance 1)."""

    k: int = Field(20, ge=1)
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0)
    scheduler: Literal["ddim", "dpmsolver++"] = "ddim"
    guidance_scale: float = Field(1.0, ge=0)
    max_batch: int = Field(256, ge=1, description="latents per U-Net call (memory budget)")
    seed: int = 23
