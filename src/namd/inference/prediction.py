"""What one patient's prediction holds, and how its baseline crop is read: shared by the model
object (`namd.inference.pipeline.NAMDPipeline`) and the one-patient API (`namd.inference.patient`), so neither imports
the other at module level.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from namd.cohort.imaging import check_crop, dtype_problem, grey_to_hu
from namd.config import NamdConfig, validated_update
from namd.config.diffusion import check_sampling_steps

# windowed units -> the grey value of the window's top: windowed_uint8 is the cohort format's
# (docs/cohort-format.md), windowed_unit the same image scaled to 0..1
WINDOWED = {"windowed_uint8": 255.0, "windowed_unit": 1.0}
UNITS = ("HU", *WINDOWED)


@dataclass
class Prediction:
    """What one patient gets: the evaluator on the real baseline and on each virtual follow-up,
    the radiologist's readout of the K follow-ups (Lung-RADS category, growth, doubling time:
    namd.clinical.readout; {} when not asked for), and what produced them (the sampling
    settings used, the crop's digest, the seed source)."""

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
    readout: dict = field(default_factory=dict)  # namd.clinical.readout: Lung-RADS, growth, VDT

    def as_json(self) -> dict:
        """The numbers (the readout's included, JSON-ready), without the image array."""
        out = asdict(self)
        out.pop("samples")
        return out


def with_sampling(config: NamdConfig, k: int | None = None, steps: int | None = None) -> NamdConfig:
    """`config` with k and steps (None = keep) validated like any config value, so `k=0` or
    `steps=-3` is a ConfigError naming sampling.k / sampling.steps, never silently ignored, and
    steps past the schedule (diffusion.num_train_timesteps) a one-line ValueError with the
    allowed range, before any model loads."""
    changes = {f"sampling.{name}": v for name, v in (("k", k), ("steps", steps)) if v is not None}
    config = validated_update(config, changes) if changes else config
    check_sampling_steps(config.sampling, config.diffusion.num_train_timesteps)
    return config


def windowed_units(crop: np.ndarray) -> str | None:
    """The windowed format a crop's values fit, whatever its dtype: 'windowed_unit' when all lie
    within 0..1, 'windowed_uint8' within 0..255, else None.

    The rule: a lung-nodule crop in HU holds lung parenchyma (about -850 HU), air or fat, all
    below 0 HU, so a crop whose every value lies within 0..255 is not plausible HU, whole
    numbers or not (a PNG read as uint8, a JPEG decoded to float, a resampled 8-bit image).
    """
    crop = np.asarray(crop)
    if dtype_problem(crop) or not crop.size or not np.isfinite(crop).all() or crop.min() < 0:
        return None
    top = float(crop.max())
    return "windowed_unit" if top <= 1 else "windowed_uint8" if top <= 255 else None


def looks_windowed(crop: np.ndarray) -> bool:
    """True for values within 0..255 (any real dtype): a windowed image, not HU (windowed_units)."""
    return windowed_units(crop) is not None


def _not_hu(crop: np.ndarray, source: str, guess: str) -> str:
    """The one line refusing a windowed-looking crop given as HU, naming the units to pass."""
    lo, hi = float(crop.min()), float(crop.max())
    if guess == "windowed_unit":
        what = f"values {lo:g}..{hi:g} all lie within 0..1, an image scaled to 0..1 rather than HU"
    elif np.array_equal(crop, np.round(crop)):
        what = f"values {lo:.0f}..{hi:.0f} are whole numbers within 0..255, a windowed 8-bit image rather than HU"
    else:
        what = f"values {lo:g}..{hi:g} all lie within 0..255, a windowed image rather than HU"
    return (f"{source}: {what} (a lung crop in HU has lung or air below 0 HU); if it was windowed "
            f"with the run's data.window_hu, pass units={guess!r} (namd predict --units {guess}), "
            "else give HU")


def _windowed_to_hu(crop: np.ndarray, config: NamdConfig, source: str, units: str) -> np.ndarray:
    """A windowed crop's grey values back to HU through data.window_hu, as training reads a
    windowed_uint8 cohort; grey values outside 0..top, or an 8-bit crop that fits 0..1 (all
    within one grey level of the window's low end: an image scaled to 0..1), are refused."""
    top = WINDOWED[units]
    lo, hi = np.nanmin(crop), np.nanmax(crop)
    if not np.isfinite(crop).all() or lo < 0 or hi > top:
        hint = "; for grey 0..255 pass units='windowed_uint8'" if top == 1 and 0 <= lo and hi <= 255 else ""
        raise ValueError(f"{source}: a {units} crop holds grey values 0..{top:g}, got "
                         f"{lo:g}..{hi:g}{hint}")
    if units == "windowed_uint8" and hi <= 1:
        raise ValueError(f"{source}: grey values {lo:g}..{hi:g} all lie within 0..1: an image "
                         "scaled to 0..1 rather than 0..255; pass units='windowed_unit'")
    return grey_to_hu(crop, tuple(config.data.window_hu), top)


def baseline_hu(crop: np.ndarray, config: NamdConfig, source: str, units: str = "HU") -> np.ndarray:
    """The baseline crop in HU (float32, the run's crop size), or a one-line error naming `source`.

    units 'windowed_uint8' (grey 0..255) and 'windowed_unit' (grey 0..1) map back through
    data.window_hu (as training reads a windowed_uint8 cohort); units 'HU' refuses a crop that
    looks windowed (`windowed_units`). Complex, boolean and object crops are refused by dtype.
    """
    crop = np.asarray(crop)
    if units not in UNITS:
        raise ValueError(f"{source}: units must be one of {', '.join(UNITS)}, got {units!r}")
    problem = dtype_problem(crop)
    if problem:
        raise ValueError(f"{source}: {problem}")
    if crop.size and units == "HU" and (guess := windowed_units(crop)):
        raise ValueError(_not_hu(crop, source, guess))
    if crop.size and units != "HU":
        crop = _windowed_to_hu(crop, config, source, units)
    return check_crop(crop, config.data.crop_size, source)


def crop_digest(crop: np.ndarray) -> str:
    """SHA-256 of the float32 HU crop: names it in provenance without any path."""
    return hashlib.sha256(np.ascontiguousarray(crop, dtype=np.float32).tobytes()).hexdigest()
