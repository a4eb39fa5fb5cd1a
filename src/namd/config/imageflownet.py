"""The ImageFlowNet, SDE (Liu et al., ICASSP 2025) row of Table 1: its two stages' settings.

ImageFlowNet is trained from scratch (paper 4.1.3), built from its paper and the project's
reference (docs/compared-methods.md; its code's licence forbids copying): a time-independent
U-Net in pixel space ([-1, 1] window units), trained first to reconstruct (RUN/
autoencoder_imageflownet: `unet`, `recon`), then, with it frozen, one SDE per skip connection
and one at the bottleneck (RUN/cond_imageflownet: the rest), each with a position-parameterised
drift and a learned diffusion scale, solved by Euler-Maruyama over the one-year interval.

The source states: the drift's layout (norm, 3x3 conv, ReLU, twice), the diffusion scale's
initial value 0.5, Euler-Maruyama with dt 0.05 over the (scaled) interval, AdamW at 1e-4 with a
warm-up then a cosine decay, and EMA. Everything else is the project's choice, said per field.
Defaults are CPU-sized (the demo's budget); the `paper` preset sets the source's values.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from namd.config.base import Section, TrainConfig


class ImageFlowNetUNetConfig(Section):
    """The time-independent U-Net: per level two (3x3 conv, GroupNorm, ReLU) then a strided
    3x3 conv down; a bottleneck of the last level's width; the decoder mirrors it on the
    concatenated skips. The source's sizes are not in its paper (project's choice: CPU
    16-32-64, three levels; paper preset 64-128-256-512)."""

    channels: tuple[int, ...] = Field((12, 24, 48), description="width of each level (one skip "
                                      "connection, and its SDE, per level; the crop size must "
                                      "divide by 2 ** levels)")
    patch: int = Field(2, ge=1, description="pixels per side folded into channels before the "
                       "first level (pixel unshuffle) and unfolded after the last (pixel shuffle): "
                       "2 at CPU size, so the finest skip and its SDE work at half resolution "
                       "(a CPU deviation: the SDEs cost ~4x less); 1 in the paper preset")
    norm_groups: int = Field(4, ge=1, description="GroupNorm groups of the U-Net and of the "
                             "drifts (GroupNorm, not BatchNorm: a sample never depends on its batch)")

    @model_validator(mode="after")
    def _fits(self) -> ImageFlowNetUNetConfig:
        """At least one level; every width splits into the norm groups."""
        if not self.channels:
            raise ValueError("channels needs at least one level")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_groups {self.norm_groups}")
        return self


class ImageFlowNetReconConfig(Section):
    """Phase 1 (RUN/autoencoder_imageflownet): the U-Net alone, noisy crop -> clean crop (MSE),
    on the train split's crops (baselines, follow-ups and unpaired crops)."""

    noise_std: float = Field(0.1, ge=0, description="std of the Gaussian added to the input, in "
                             "[-1, 1] window units (the source says 'noisy input'; its level is "
                             "the project's choice)")
    unpaired: bool = Field(True, description="also train on the unpaired crops of the train split")
    # CPU: 150 cosine steps of 32 crops (about four passes over the demo's 1,159 train crops;
    # validation MSE 0.0098 against 0.0139 after 100 steps)
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=32, max_steps=150, warmup_steps=10,
                                     schedule="cosine", min_lr=1e-5, val_every=50,
                                     checkpoint_every=150, rotation_augment=True)


class ImageFlowNetConfig(Section):
    """Both ImageFlowNet stages: the reconstruction U-Net and the SDEs on its features."""

    unet: ImageFlowNetUNetConfig = ImageFlowNetUNetConfig()
    recon: ImageFlowNetReconConfig = ImageFlowNetReconConfig()
    diffusion_init: float = Field(0.5, ge=0, description="initial value of each SDE's learned "
                                  "diffusion scale sigma (dh = f(h) dt + sigma dW; source 0.5)")
    solver_steps: int = Field(10, ge=1, description="Euler-Maruyama steps over the interval in "
                              "training (source dt 0.05 over the scaled interval: 20; CPU 10)")
    sampling_steps: int = Field(10, ge=1, description="Euler-Maruyama steps over the interval "
                                "when sampling (source 20; CPU 10); sampling only")
    smoothness_weight: float = Field(1e-5, ge=0, description="weight of the smoothness term: the "
                                     "sum of the squared Frobenius norms of the drifts' conv "
                                     "weights, a bound on their Lipschitz constant (the source "
                                     "says 'a smoothness term on the drift weights'; the form and "
                                     "weight are the project's reading)")
    # CPU: 150 cosine steps of 16 pairs (about five passes over the demo's 437 train pairs) at
    # lr 5e-3, far above the source's 1e-4, so the drifts and the scales move in that few steps
    # (at 2e-3 the forecasts were no nearer the follow-ups than the baseline's reconstruction)
    train: TrainConfig = TrainConfig(lr=5e-3, batch_size=16, max_steps=150, warmup_steps=10,
                                     schedule="cosine", min_lr=1e-5, val_every=50,
                                     checkpoint_every=150, rotation_augment=True)
