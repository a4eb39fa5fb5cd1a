"""The CorrFlowNet-style rows of Table 1 (Wu et al., arXiv 2511.18185; paper 4.1.3): its stages.

Only the abstract is public (no code): a correlational autoencoder (baseline and follow-up crops
into a small spatial latent whose two time points' correlation is rewarded, with an auxiliary
malignancy classifier on the latent) and a "background-aligned" rectified flow in that latent
space, from the baseline's latent to the follow-up's, sampled as an ODE (one deterministic
follow-up) or an SDE (K random follow-ups). Every size and weight below is the project's reading
(docs/compared-methods.md): the defaults are CPU-sized, the paper preset states the larger
sizes chosen in the absence of a source. Two stages: RUN/autoencoder_corrflownet (`autoencoder`)
and RUN/cond_corrflownet (the flow, `cond`); the SDE row trains nothing and samples the ODE
row's flow with sde_scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from namd.config.base import Section, TrainConfig


class CorrAutoencoderConfig(Section):
    """The correlational autoencoder (inferred): a convolutional encoder (crops in the [-1, 1]
    window units -> posterior mean and log-variance of a C x h x w latent, h = crop / 2^levels),
    a mirrored decoder and a malignancy head on the latent. Trained on train-split PAIRS: both
    crops reconstructed from their own latents, the per-dimension Pearson correlation of the two
    latents over the batch rewarded (CorrNet, Chandar et al. 2016), the head's BCE on the pair's
    label for both latents, a small KL. CPU default (8, 16, 32) -> 4 x 16 x 16 at 64 px."""

    channels: tuple[int, ...] = Field((8, 16, 32), description=(
        "encoder widths per resolution (the first at full size); len - 1 stride-2 downsamplings "
        "(64 px -> 16 x 16 with three levels, as the brief's 4 x 16 x 16 at 64 px)"))
    blocks: int = Field(1, ge=1, description="residual blocks per resolution (project's choice)")
    latent_channels: int = Field(4, ge=1, description="latent channels C (SD's 4, project's choice)")
    norm_groups: int = Field(8, ge=1, description="GroupNorm groups")
    head_width: int = Field(32, ge=1, description=(
        "malignancy head: a 1x1 conv to this width, SiLU, global average pool, a linear logit "
        "(pooling measures the extent of nodule-like features: size and growth)"))
    recon: Literal["l1", "mse"] = Field("l1", description="reconstruction loss (L1: sharper edges)")
    corr_weight: float = Field(0.1, ge=0, description=(
        "weight of 1 - mean per-dimension Pearson correlation of the baseline and follow-up "
        "latents over the batch; small beside the reconstructions so the latents cannot collapse "
        "to a copy: each must still reconstruct its own crop, and correlation is centred and "
        "scale-free, so neither shrinking nor a constant latent raises it"))
    pred_weight: float = Field(0.05, ge=0, description=(
        "weight of the malignancy head's BCE (both latents, the pair's label; unlabelled pairs "
        "left out)"))
    kl_weight: float = Field(1e-5, ge=0, description=(
        "weight of the KL to N(0, I) (per element mean; keeps the latent's scale bounded; the "
        "flow works on posterior means divided by their training std)"))
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=16, max_steps=150, schedule="cosine",
                                     min_lr=1e-4, val_every=50, checkpoint_every=150,
                                     rotation_augment=True)

    @model_validator(mode="after")
    def _fits(self) -> CorrAutoencoderConfig:
        """At least one level; every width splits into the norm groups."""
        if not self.channels:
            raise ValueError("channels needs at least one level")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"channels {bad} not divisible by norm_groups {self.norm_groups}")
        return self


class CorrFlowConfig(Section):
    """The velocity network v(z_t, t[, z_b]): a diffusers UNet2DModel on the latent, z_t in (C
    channels; [z_t, z_b] concatenated, 2C, with condition_on_baseline), the velocity out, t x 1000
    as its timestep (project's choice of network: the abstract names none). CPU (16, 32)."""

    block_out_channels: tuple[int, ...] = Field((16, 32), description="widths per level")
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    attention: bool = Field(False, description="self-attention in the middle block")
    head_channels: int = Field(32, ge=1, description="channels per attention head (with attention)")

    @model_validator(mode="after")
    def _fits(self) -> CorrFlowConfig:
        """Every width splits into the norm groups; the last one into heads."""
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} not divisible by {self.norm_num_groups}")
        if self.attention and self.block_out_channels[-1] % self.head_channels:
            raise ValueError(f"block_out_channels[-1] {self.block_out_channels[-1]} not divisible "
                             f"by head_channels {self.head_channels}")
        return self


class CorrFlowNetConfig(Section):
    """Settings of the CorrFlowNet-style (Wu et al., arXiv 2511.18185) rows (CPU defaults; the
    paper preset sets the sizes chosen for a GPU)."""

    autoencoder: CorrAutoencoderConfig = CorrAutoencoderConfig()
    flow: CorrFlowConfig = CorrFlowConfig()
    condition_on_baseline: bool = Field(False, description=(
        "True: v(z_t, t, z_b) with z_b concatenated; False (both presets): v(z_t, t), a plain "
        "rectified flow from the baseline latents to the follow-up latents. With z_b given, the "
        "exact velocity is (z_t - z_b) / t at every t > 0, a shortcut the network learns in "
        "place of the growth: the ODE then rests on its t = 0 prediction alone and the SDE's "
        "noise is amplified by 1 / t; on the demo cohort the conditioned flow (32, 64) was no "
        "closer to the real follow-ups (MAE 88.3 HU) than the plain one (16, 32; 87.8 HU) at "
        "1.6x its CPU time (project's choice, docs/compared-methods.md)"))
    t_sampling: Literal["uniform", "logit_normal"] = Field("uniform", description=(
        "training times: uniform (rectified flow, Liu et al. 2023) or logit-normal (SD3)"))
    # the flow's training (CPU: 400 cosine steps of 32 pairs, about 29 epochs of the demo's 437)
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=32, max_steps=400, schedule="cosine",
                                     min_lr=5e-5, val_every=100, checkpoint_every=400,
                                     rotation_augment=True)
    # sampling only (the cond stage ignores both)
    sampling_steps: int = Field(4, ge=1, description=(
        "Euler (ODE) / Euler-Maruyama (SDE) steps (a rectified flow is nearly straight: few "
        "steps suffice; CPU 4)"))
    sde_scale: float = Field(0.3, ge=0, description=(
        "the SDE row's diffusion scale s: dz = v dt + s sqrt(t (1 - t)) dW in the flow's scaled "
        "latent units (a Brownian-bridge-shaped term: no noise at the baseline nor in the last "
        "step; project's choice)"))
