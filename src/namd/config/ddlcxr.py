"""The DDL-CXR row of Table 1 (Yao et al., NeurIPS 2024; paper 4.1.3): its own two stages.

DDL-CXR is trained from scratch (paper 4.1.3), following its official code (Chenliu-svg/DDL-CXR,
Apache-2.0; read, not copied): a label-supervised KL autoencoder (`vae`: a VAEConfig of its own,
so RUN/vae_ddlcxr is read like every VAE stage), then one latent-diffusion stage (RUN/cond_ddlcxr):
a U-Net with the previous (baseline) latent concatenated and a jointly trained transformer over
the record whose tokens feed cross-attention, trained with a three-term loss, sampled by DDIM
with eta 1. Defaults are CPU-sized; the paper preset sets the source's sizes. What the source
does not say, or what differs at CPU size, is said per field and in docs/compared-methods.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from namd.config.base import Section, TrainConfig
from namd.config.vae import VAEConfig


class DDLCXRUNetConfig(Section):
    """The source's openaimodel U-Net as diffusers' UNet2DConditionModel: cross-attention
    (one transformer layer) at every level and in the middle block, a fixed number of channels
    per head. CPU default (16, 32, 64) x 1 block; paper preset 224 x (1, 2, 4), 2 blocks."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = Field(1, ge=1, description="res-blocks per level (source: 2)")
    head_channels: int = Field(16, ge=1, description="channels per attention head (source's "
                               "num_head_channels: 16); heads per level = channels / 16")
    norm_num_groups: int = Field(16, ge=1, description="GroupNorm groups (source: 32)")
    dropout: float = Field(0.0, ge=0, lt=1, description="res-block dropout (source: 0)")

    @model_validator(mode="after")
    def _fits(self) -> DDLCXRUNetConfig:
        """At least two levels; every level's channels split into heads and norm groups."""
        if len(self.block_out_channels) < 2:
            raise ValueError("block_out_channels needs at least two levels")
        bad = [c for c in self.block_out_channels
               if c % self.head_channels or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} not divisible by head_channels "
                             f"{self.head_channels} and norm_num_groups {self.norm_num_groups}")
        return self


class RecordEncoderConfig(Section):
    """The source's TSTransformerEncoder over the record: one token per NLST field (in place of
    its clinical time series), a CLS token, fixed sinusoidal positions, BatchNorm transformer
    layers, GELU; its tokens are the U-Net's cross-attention context (width d_model)."""

    d_model: int = Field(128, ge=8, description="token width = the U-Net's context dim (source 128)")
    heads: int = Field(8, ge=1, description="attention heads (source 8)")
    layers: int = Field(1, ge=1, description="transformer layers (source 1)")
    feedforward: int = Field(256, ge=1, description="feed-forward width (source 256)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout (source 0.2)")

    @model_validator(mode="after")
    def _heads_split_width(self) -> RecordEncoderConfig:
        """d_model must split into the heads."""
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        return self


class DDLCXRConfig(Section):
    """Both DDL-CXR stages: its VAE (RUN/vae_ddlcxr) and its conditional U-Net (RUN/cond_ddlcxr)."""

    # the label-supervised VAE: NAMD's VAE stage without L_align, with the label head's BCE
    # weighted adaptively (the source's calculate_adaptive_label_weight, vae.pred_weight), from
    # scratch, no rotations (the source does not rotate its CXRs). CPU: (16, 32, 32, 32), one
    # res-block, 270 cosine steps at lr 2e-3: validation PSNR 22.5 dB on the demo's cohort, where
    # (16, 32, 64, 64) x 240 steps gave 21.9 and (8, 16, 32, 32) x 400 steps 22.0 in more CPU time
    # (the adaptive weight's two extra gradients cost a third more per step; docs/compared-methods.md)
    vae: VAEConfig = VAEConfig(
        pretrained=None, align=False, lambda_pred=1.0, pred_weight="adaptive",
        pred_balance="none", select_on="loss_without_pred", block_out_channels=(16, 32, 32, 32),
        train=TrainConfig(lr=2e-3, batch_size=16, max_steps=270, schedule="cosine",
                          rotation_augment=False))
    unet: DDLCXRUNetConfig = DDLCXRUNetConfig()
    record: RecordEncoderConfig = RecordEncoderConfig()
    # its noise schedule (DDPM, saved with the stage): the source's "linear" 0.0015-0.0195 is
    # CompVis' linspace over sqrt(beta), squared, which diffusers calls scaled_linear
    num_train_timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0195, gt=0)
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction", description="what the U-Net predicts: the noise (the source; paper preset) "
        "or v (CPU presets, a deviation): trained from scratch for a few hundred steps, the epsilon "
        "model's errors at high noise became x0 errors of 100-1000 (mean squared, latents of unit "
        "variance) and its samples blobs, as NAMD's own (benchmarks/results/follow_baseline.md); "
        "every loss term then compares v, not the noise")
    # the three-term loss (DDL_CXR_LDM.p_losses)
    label_weight: float = Field(1.4, ge=0, description="weight of the BCE of the label head on the "
                                "CLS token against the target (follow-up) image's label (source 1.4)")
    triplet_weight: float = Field(1.0, ge=0, description="weight of the triplet hinge at the end of "
                                  "its ramp (source 1)")
    margin: float = Field(0.2, ge=0, description="the triplet hinge's margin (source 0.2)")
    blend: float = Field(0.5, gt=0, lt=1, description="the negative record: tokens x (1 - blend) + "
                         "N(0, I) x blend (source 0.5)")
    # training of the U-Net and the record encoder (the paper preset: the source's recipe; CPU:
    # 300 cosine steps of 32 pairs, about 22 epochs of the demo's 437 training pairs)
    train: TrainConfig = TrainConfig(lr=1e-3, batch_size=32, max_steps=300, schedule="cosine",
                                     rotation_augment=False, val_every=50)
    # its sampler: DDIM over its own schedule, x_T drawn per sample seed
    sampling_steps: int = Field(10, ge=1, description="DDIM steps (source 200; CPU presets 10)")
    sampling_eta: float = Field(1.0, ge=0, description="DDIM eta (source 1: a fresh Gaussian per step)")

    @field_validator("beta_end")
    @classmethod
    def _beta_order(cls, value: float, info: ValidationInfo) -> float:
        """beta_end above beta_start."""
        start = info.data.get("beta_start")
        if start is not None and value <= start:
            raise ValueError(f"must exceed beta_start ({start})")
        return value
