"""Shared pieces of the typed configuration: a strict base model and the training section."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# cuBLAS reads this when its first handle is made; deterministic GEMMs need it set before that
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# the value of vae.pretrained / diffusion.unet.pretrained that names the weights shipped with
# namd (namd.models.foundation), the CPU presets' stand-in for SD1.5
FOUNDATION = "namd:foundation"


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo in YAML never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(Section):
    """Settings of the shared trainer (one instance per stage: vae, prior, cond, evaluator).

    A "step" is one optimizer step: grad_accum micro-batches of batch_size items on each of the
    processes, so batch_size x grad_accum x processes items. max_steps, epochs, the schedule,
    checkpoint_every and val_every all count these steps.

    Defaults are CPU-sized; the `paper` preset sets Appendix B's values per stage.
    """

    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1, description="items per micro-batch and process")
    grad_accum: int = Field(1, ge=1, description=(
        "micro-batches accumulated into one optimizer step (accelerate's "
        "gradient_accumulation_steps); effective batch = batch_size x grad_accum x processes"))
    max_steps: int = Field(200, ge=1, description="optimizer steps; ignored when epochs is set")
    epochs: float | None = Field(None, gt=0, description=(
        "when set, overrides max_steps: steps = ceil(epochs x len(train) / (batch_size x "
        "grad_accum x processes)), len(train) being the training split actually loaded: "
        "pairs for cond, crops for the VAE, the prior and the evaluator. One epoch is one pass "
        "over those items as stored, without counting rotated copies (rotations are drawn per "
        "step); the authors' code stores each item and its four rotations (45, 90, 135, 180 "
        "degrees) as five items, so one of their epochs is five of ours"))
    warmup_steps: int = Field(0, ge=0)
    warmup_start_lr: float = Field(1e-6, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = Field(1e-5, ge=0)
    cosine_steps: int | None = Field(None, ge=1, description=(
        "length of the cosine decay; None = the resolved steps (max_steps, or from epochs) "
        "minus warmup_steps"))
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description=(
        "AdamW's (beta1, beta2); torch's default; the authors' VAE uses (0.5, 0.9)"))
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 23  # paper, Appendix B
    deterministic: bool = Field(False, description=(
        "Appendix B's deterministic operations: torch.use_deterministic_algorithms, cuDNN "
        "deterministic and no benchmark, CUBLAS_WORKSPACE_CONFIG=:4096:8 (set when this config "
        "is loaded, before the first cuBLAS call); slower on a GPU, and an op without a "
        "deterministic kernel then raises"))
    checkpoint_every: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    val_batches: int = Field(4, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # paper: 32-bit
    rotation_augment: bool = True  # paper: random rotations by 45, 90, 135, 180 degrees
    ema_decay: float | None = Field(None, gt=0, lt=1)
    num_workers: int = Field(0, ge=0, description=(
        "unused: the trainer reads each batch in its own process through BatchSource.batch "
        "(memory-mapped crops or cached latents), with no torch DataLoader and so no workers"))

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        """AdamW needs 0 <= beta < 1 for both moments."""
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        return betas

    @model_validator(mode="after")
    def _cublas_workspace_early(self) -> TrainConfig:
        """With deterministic on, set CUBLAS_WORKSPACE_CONFIG as soon as the config exists: a
        stage loads its config before it touches the GPU (setdefault: a user's value wins)."""
        if self.deterministic:
            os.environ.setdefault(*CUBLAS_WORKSPACE)
        return self
