"""Shared pieces of the typed configuration: a strict base model and the training section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo in YAML never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(Section):
    """Settings of the shared trainer (one instance per stage: vae, prior, cond, evaluator).

    Defaults are CPU-sized; the `paper` preset sets Appendix B's values per stage.
    """

    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(200, ge=1)
    warmup_steps: int = Field(0, ge=0)
    warmup_start_lr: float = Field(1e-6, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = Field(1e-5, ge=0)
    cosine_steps: int | None = Field(None, ge=1, description="length of the cosine decay; None = max_steps")
    weight_decay: float = Field(1e-2, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 23  # paper, Appendix B
    checkpoint_every: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    val_batches: int = Field(4, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # paper: 32-bit
    rotation_augment: bool = True  # paper: random rotations by 45, 90, 135, 180 degrees
    ema_decay: float | None = Field(None, gt=0, lt=1)
    num_workers: int = Field(0, ge=0)
