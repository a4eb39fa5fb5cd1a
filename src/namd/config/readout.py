"""The radiologist's readout of the K follow-ups (namd.clinical): Lung-RADS version, the pair's
interval, and the measurer's own error that enters its probabilities.

The error defaults were measured on the synthetic cohort against the generator's true
diameters (not the recorded ones, which carry reader noise), 400 pairs of seed 0, both time
points, per nodule type: `python benchmarks/readout.py error --pairs 400`
(benchmarks/results/readout.md). No real nodule of the project has a diameter reference, so on
real crops these are the synthetic cohort's numbers, not a measured error (docs/readout.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from namd.config.base import Section


class MeasurerError(Section):
    """The measurer's error of one nodule type, in mm of mean diameter: measured - true."""

    bias_mm: float = Field(0.0, description="mean error of one image's mean diameter")
    size_sd_mm: float = Field(1.0, ge=0, description="sd of one image's mean-diameter error")
    growth_sd_mm: float = Field(1.0, ge=0, description=(
        "sd of the error of a growth (follow-up - baseline, both measured): smaller than "
        "sqrt(2) size_sd_mm, since a nodule's shape biases both of its images alike"))
    solid_bias_mm: float = Field(0.0, description="part-solid: mean error of the solid component")
    solid_sd_mm: float = Field(0.0, ge=0, description="part-solid: sd of the solid component's error")


class ReadoutConfig(Section):
    """Settings of the per-patient readout: Lung-RADS category, growth, doubling time."""

    version: Literal["2022", "1.1"] = Field("2022", description=(
        "Lung-RADS version of the stable-nodule rule (the only rule here where they differ): "
        "v2022 steps a stable 4A to 3 and a stable 3 to 2; v1.1 codes a stable 3 or 4 as 2"))
    interval_days: float = Field(365.0, gt=0, description=(
        "days between the baseline and the (virtual) follow-up: the synthetic cohort's pairs "
        "are one year apart (namd.cohort.synthetic.patients.FOLLOWUP_DAYS)"))
    draws: int = Field(25, ge=1, le=1000, description=(
        "measurement errors drawn per sample (seeded by readout.seed and the patient's key): "
        "the probabilities are over K x draws"))
    seed: int = Field(0, ge=0)
    solid_fraction: tuple[float, float] = Field((0.25, 0.6), description=(
        "the image's attenuation class from solid_mm / equivalent_mm (namd.evaluation.measure): "
        "below the first non-solid, from the second solid, between them part-solid"))
    solid: MeasurerError = MeasurerError(bias_mm=0.74, size_sd_mm=1.10, growth_sd_mm=0.67)
    part_solid: MeasurerError = MeasurerError(bias_mm=-1.02, size_sd_mm=1.39, growth_sd_mm=0.82,
                                              solid_bias_mm=-0.30, solid_sd_mm=0.77)
    non_solid: MeasurerError = MeasurerError(bias_mm=0.41, size_sd_mm=2.59, growth_sd_mm=1.59)

    @model_validator(mode="after")
    def _fractions_ordered(self) -> ReadoutConfig:
        lo, hi = self.solid_fraction
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"readout.solid_fraction must be [low, high] with 0 <= low < high "
                             f"<= 1, got {list(self.solid_fraction)}")
        return self

    def error(self, kind: str) -> MeasurerError:
        """The measurer error of a Lung-RADS nodule type ('solid', 'part-solid', 'non-solid')."""
        return {"solid": self.solid, "part-solid": self.part_solid, "non-solid": self.non_solid}[kind]
