"""The McWGAN / GP-WGAN (Wang et al., Cancers 2024) row of Table 1: its own stages' settings.

Two stages (namd.config.methods' `mcwgan` entry): the nodule classifier whose last hidden layer
is the perceptual loss's feature space (RUN/classifier_mcwgan, trained on the training split's
labelled crops only), then the predictor and its WGAN-GP critic (RUN/cond_mcwgan). The source
has no public code; its paper gives the loss terms (L1, SSIM, a perceptual distance in a
modified ResNet-18's last hidden layer, the adversarial term) but, in what namd's reference
holds, neither their weights nor its optimiser: every such value below is the project's choice
and says so. The defaults are CPU sizes; the `paper` preset sets a ResNet-18 classifier and
source-depth networks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from namd.config.base import Section, TrainConfig


def _widths(value: tuple[int, ...]) -> tuple[int, ...]:
    """Channel widths: at least one level, each positive."""
    if not value or any(w < 1 for w in value):
        raise ValueError(f"widths must be one or more positive channel counts, got {list(value)}")
    return value


class McWGANClassifierConfig(Section):
    """The nodule classifier of the perceptual loss: a ResNet (3x3 stem without max-pool for
    small crops, then stages of basic blocks, stride 2 between stages, global average pool =
    the last hidden layer, one malignancy logit). Paper preset: ResNet-18's 4 stages x 2 blocks
    at 64-128-256-512 (the source's "modified ResNet-18"; what it modified is not in namd's
    reference: one input channel and a 3x3 stem are the project's). CPU: 16-32-64, 1 block."""

    widths: tuple[int, ...] = Field((16, 32, 64), description="channels per stage")
    blocks: int = Field(1, ge=1, description="basic blocks per stage (ResNet-18: 2)")
    stem_stride: int = Field(
        2, ge=1, le=4, description="the 3x3 stem's stride: 1 at the paper preset (the usual "
        "small-image ResNet-18 modification, no max-pool); CPU: 2, a quarter of the cost")
    # CPU: ~12 passes over the demo's ~1,080 labelled training crops at batch 64; the source
    # gives no schedule for its classifier (project's choice at both sizes)
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=64, max_steps=200, schedule="cosine",
                                     warmup_steps=10, checkpoint_every=100, val_every=100)

    _check_widths = field_validator("widths")(_widths)


class McWGANConfig(Section):
    """GP-WGAN: a U-Net predictor (baseline crop -> follow-up crop, pixel space, [-1, 1] window
    units) trained against a conditional WGAN-GP critic, with L1 + (1 - SSIM) + the classifier's
    perceptual distance + the adversarial term (namd.training.mcwgan)."""

    classifier: McWGANClassifierConfig = McWGANClassifierConfig()
    predictor_widths: tuple[int, ...] = Field(
        (8, 16, 32), description="U-Net channels per level (two 3x3 convolutions each); the "
        "source's appendix structure is not in namd's reference: paper preset 64-128-256-512 "
        "(a standard U-Net depth, project's choice)")
    residual: bool = Field(
        True, description="the predictor outputs baseline + a learned change (its last "
        "convolution starts at zero, so training starts from the copy); project's choice")
    critic_widths: tuple[int, ...] = Field(
        (16, 32, 64), description="critic channels per stride-2 level, LeakyReLU 0.2, no "
        "normalisation (WGAN-GP: no batch norm in the critic); it reads the baseline and the "
        "candidate follow-up concatenated (a conditional critic: inferred from the 'Mc')")
    l1_weight: float = Field(1.0, ge=0, description="weight of the pixel L1 term")
    ssim_weight: float = Field(1.0, ge=0, description="weight of 1 - SSIM (Wang et al. 2004)")
    perceptual_weight: float = Field(
        0.1, ge=0, description="weight of the perceptual distance between the classifier's "
        "last-hidden-layer features of prediction and real follow-up (project's choice)")
    perceptual_distance: Literal["l1", "mse"] = Field(
        "l1", description="the source averages the features' difference: mean absolute (l1)")
    adversarial_weight: float = Field(
        0.01, ge=0, description="weight of the predictor's -D(fake); 1/100 of L1, the ratio "
        "pix2pix uses (the source's weights are not in namd's reference)")
    gp_weight: float = Field(10.0, ge=0, description="WGAN-GP's lambda (Gulrajani et al. 2017)")
    n_critic: int = Field(
        1, ge=1, description="critic steps per predictor step: the predictor is updated on every "
        "n_critic-th optimizer step only (WGAN-GP: 5, the paper preset); CPU: 1, simultaneous "
        "updates (each network still gets the gradient of its own objective only)")
    ssim_window: int = Field(11, ge=3, description="SSIM's Gaussian window (Wang et al.: 11)")
    ssim_sigma: float = Field(1.5, gt=0, description="SSIM window's sigma (Wang et al.: 1.5)")
    # CPU: AdamW at 1e-3 with WGAN-GP's released betas (0.5, 0.9), batch 16, sized to the
    # demo's budget; no gradient clipping: the shared trainer clips the joint norm of predictor
    # and critic, which would couple the two networks' steps
    train: TrainConfig = TrainConfig(lr=1e-3, betas=(0.5, 0.9), batch_size=16, max_steps=450,
                                     schedule="cosine", warmup_steps=10, grad_clip=None,
                                     val_every=50, checkpoint_every=100)

    _check_widths = field_validator("predictor_widths", "critic_widths")(_widths)
