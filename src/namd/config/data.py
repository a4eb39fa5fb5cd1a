"""Cohort geometry and intensity window, shared by every stage that reads crops."""

from __future__ import annotations

from pydantic import Field, model_validator

from namd.config.base import Section


class DataConfig(Section):
    """Crop geometry and the HU window that maps crops to the networks' [-1, 1] range."""

    crop_size: int = Field(64, ge=16, description="crop side in pixels (paper: 64)")
    pixel_spacing_mm: float = Field(0.7, gt=0, description="physical in-plane spacing of crops")
    window_hu: tuple[float, float] = Field((-1000.0, 400.0), description="lung window [low, high]")

    @model_validator(mode="after")
    def _window_ordered(self) -> DataConfig:
        lo, hi = self.window_hu
        if not lo < hi:
            raise ValueError(f"data.window_hu must be [low, high] with low < high, got {self.window_hu}")
        return self


class SynthConfig(Section):
    """The embedded synthetic longitudinal cohort (stands in for NLST and the prior's crops)."""

    pairs: int = Field(600, ge=0)
    unpaired: int = Field(400, ge=0)
    seed: int = 0
    malignant_share: float = Field(0.12, gt=0, lt=1, description="target share near the paper's test set")
    missing_rate: float = Field(0.05, ge=0, lt=1, description="per-field missingness of EHR values")
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
