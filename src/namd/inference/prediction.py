"""What one patient's prediction holds, and how its baseline crop is read: shared by the model
object (`namd.inference.pipeline.NAMDPipeline`) and the one-patient API (`namd.inference.patient`), so neither imports
the other at module level.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from namd.cohort.imaging import check_crop, grey_to_hu
from namd.config import NamdConfig, validated_update

UNITS = ("HU", "windowed_uint8")  # the cohort format's units (docs/cohort-format.md)


@dataclass
class Prediction:
    """What one patient gets: the evaluator on the real baseline and on each virtual follow-up,
    and what produced them (the sampling settings used, the crop's digest, the seed source)."""

    report_sentence: str
    p_baseline: float
    p_followup: list[float]
    p_followup_mean: float
    p_followup_std: float
    brock: float | None
    k: int
    steps: int
    sampling: dict
    seed_from: str
    baseline_sha256: str
    samples: np.ndarray = field(repr=False)
    provenance: dict = field(default_factory=dict)  # model sha256, variant, seed rule, probability

    def as_json(self) -> dict:
        """The numbers, without the image array."""
        out = asdict(self)
        out.pop("samples")
        return out


def with_sampling(config: NamdConfig, k: int | None = None, steps: int | None = None) -> NamdConfig:
    """`config` with k and steps (None = keep) validated like any config value, so `k=0` or
    `steps=-3` is a ConfigError naming sampling.k / sampling.steps, never silently ignored."""
    changes = {f"sampling.{name}": v for name, v in (("k", k), ("steps", steps)) if v is not None}
    return validated_update(config, changes) if changes else config


def looks_windowed(crop: np.ndarray) -> bool:
    """True for whole numbers within 0..255: an 8-bit windowed image (PNG, JPEG), not HU."""
    crop = np.asarray(crop)
    return bool(crop.size and np.isfinite(crop).all() and crop.min() >= 0 and crop.max() <= 255
                and np.array_equal(crop, np.round(crop)))


def baseline_hu(crop: np.ndarray, config: NamdConfig, source: str, units: str = "HU") -> np.ndarray:
    """The baseline crop in HU (float32, the run's crop size), or a one-line error naming `source`.

    units 'windowed_uint8' maps grey 0..255 back through data.window_hu (as training reads a
    windowed_uint8 cohort); units 'HU' refuses a crop that looks windowed.
    """
    crop = np.asarray(crop)
    if units not in UNITS:
        raise ValueError(f"{source}: units must be one of {', '.join(UNITS)}, got {units!r}")
    numeric = np.issubdtype(crop.dtype, np.number) and crop.size > 0
    if units == "HU" and numeric and looks_windowed(crop):
        raise ValueError(f"{source}: values {crop.min():.0f}..{crop.max():.0f} are whole numbers "
                         "within 0..255, a windowed 8-bit image rather than HU; give HU, or say "
                         "the crop is windowed (--units windowed_uint8)")
    if units == "windowed_uint8" and numeric:
        if not np.isfinite(crop).all() or crop.min() < 0 or crop.max() > 255:
            raise ValueError(f"{source}: a windowed_uint8 crop holds grey values 0..255, got "
                             f"{np.nanmin(crop):.0f}..{np.nanmax(crop):.0f}")
        crop = grey_to_hu(crop, tuple(config.data.window_hu))
    return check_crop(crop, config.data.crop_size, source)


def crop_digest(crop: np.ndarray) -> str:
    """SHA-256 of the float32 HU crop: names it in provenance without any path."""
    return hashlib.sha256(np.ascontiguousarray(crop, dtype=np.float32).tobytes()).hexdigest()
