"""The nodule-aligned VAE (paper 3.2, Equation 6, Appendix B)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import Section, TrainConfig


class VAEConfig(Section):
    """Network size, loss weights and training of the nodule-aligned KL autoencoder."""

    # network (tiny defaults; the paper preset is the SD1.5 VAE: 128,256,512,512, 2 blocks)
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    in_channels: int = Field(1, description="1, or 3 replicated channels for SD1.5 weights")
    norm_num_groups: int = Field(16, ge=1)
    pretrained: str | None = Field(None, description="local SD1.5 VAE: diffusers folder or .safetensors/.ckpt file")
    # losses (Equation 6); defaults follow the authors' code where the paper is silent
    lambda_kl: float = Field(1e-6, ge=0)
    lambda_lpips: float = Field(0.0, ge=0)
    lpips_weights: str | None = Field(None, description="local LPIPS weights; off when absent")
    lambda_align: float = Field(1.0, ge=0)
    lambda_pred: float = Field(0.2, ge=0)
    align: bool = Field(True, description="False = the paper's 'w/o L_align' ablation (no L_align, no L_pred)")
    sigma_f: float = Field(4.0, gt=0)
    sigma_z: float = Field(1.0, gt=0)
    temperature: float = Field(0.5, gt=0)
    projection: Literal["mean", "flatten"] = "mean"
    pred_balance: Literal["pos_weight", "none"] = "pos_weight"
    train: TrainConfig = TrainConfig(lr=5e-5, batch_size=32, max_steps=300)
