"""Cohort geometry and intensity window, shared by every stage that reads crops."""

from __future__ import annotations

from typing import Literal

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

    # 1,000 pairs split 45/10/45 by patient: 470 test pairs, 47 malignant (the paper tests on
    # 450 pairs, 53 malignant), and training splits no smaller than the 600-pair 70/10/20
    # cohort before (437 train pairs; 640 unpaired crops keep 285 in train)
    pairs: int = Field(1000, ge=0)
    unpaired: int = Field(640, ge=0)
    seed: int = Field(0, ge=0, description="numpy seeds must be non-negative")
    malignant_share: float = Field(0.12, gt=0, lt=1, description="target share near the paper's test set")
    missing_rate: float = Field(0.05, ge=0, lt=1, description="per-field missingness of EHR values")
    split_fractions: tuple[float, float, float] = (0.45, 0.1, 0.45)
    known_futures: int = Field(20, ge=0, description=(
        "M: reference futures per labelled test pair (further one-year follow-ups of the same "
        "nodule, redrawn from new streams; known_futures.npy); 0 writes no futures files"))
    held_out_futures: int = Field(8, ge=0, description=(
        "H: further futures per test pair kept apart; the evaluation scores them as if they "
        "were a generator (the ceiling); written only when known_futures > 0"))

    @model_validator(mode="after")
    def _fractions_usable(self) -> SynthConfig:
        if min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError("synth.split_fractions must be three non-negative numbers with a "
                             f"positive sum (train, val, test), got {self.split_fractions}")
        return self


class IngestConfig(Section):
    """How `namd prepare` turns real scans and tables into a cohort (docs/data-sources.md).

    Where the paper is silent (it does not describe preprocessing) these are documented choices.
    """

    split_fractions: tuple[float, float, float] = Field(
        (0.7, 0.1, 0.2), description="train/val/test shares of patients when no split column")
    split_seed: int = Field(0, ge=0)
    coordinate_frame: Literal["LPS", "RAS"] = Field(
        "LPS", description="frame of world coordinates in the inputs (LPS = DICOM/ITK, as LUNA16)")
    slice_spacing_tolerance: float = Field(
        0.05, gt=0, lt=0.5, description="allowed relative deviation of slice steps from the median")
    max_tilt_degrees: float = Field(5.0, ge=0, le=45, description="largest angle of the slice normal from z")
    avoid_kernels: tuple[str, ...] = Field(
        ("BONE", "B70", "B75", "B80", "EDGE", "DETAIL"),
        description="kernel substrings of series used only when no other series exists")
    label_window_years: int = Field(
        2, ge=0, le=7, description="NLST: malignant if cancyr <= baseline study year + this")
    pair_max_distance_mm: float = Field(30.0, gt=0, description="NLST pairing rule: centre distance")
    pair_max_diameter_change_mm: float = Field(10.0, gt=0, description="NLST pairing rule: size change")
    slice_agreement_mm: float = Field(
        10.0, gt=0, description="largest gap between a given slice and the coordinate's z")

    @model_validator(mode="after")
    def _fractions_usable(self) -> IngestConfig:
        if min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError("ingest.split_fractions must be three non-negative numbers with a "
                             f"positive sum (train, val, test), got {self.split_fractions}")
        return self
