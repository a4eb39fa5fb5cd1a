"""Predictions for one new patient: K virtual one-year follow-ups of a baseline crop and the
malignancy estimate they support, from a trained run (the Python API behind `namd predict`).

    from namd.predict import predict_patient
    result = predict_patient("runs/demo", baseline_hu, EHR.from_mapping(record), key="patient 7")
    result.p_followup_mean, result.p_followup_std, result.samples  # (K, H, W) HU

Every number (k, steps) goes through the typed config, and provenance records the values
used. A patient's K initial noises come from its id (`key`) or, without one, from a hash of
its crop, so two patients never share them. A crop that looks like a windowed 8-bit image
(whole numbers within 0..255) is refused where HU are expected, unless units say so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR, record_id, report_sentence
from namd.config import NamdConfig, validated_update
from namd.imaging import check_crop, grey_to_hu
from namd.rundir import RunDir, variant_dirs

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


def predict_patient(run: str | Path | RunDir, baseline: np.ndarray, ehr: EHR,
                    config: NamdConfig | None = None, k: int | None = None,
                    steps: int | None = None, key: str | None = None,
                    units: str = "HU") -> Prediction:
    """K virtual follow-ups of one baseline crop, conditioned on its EHR, and their scores.

    Sample k uses the seed rule of `namd sample` (sampling.seed, key, k): `key` is the
    patient's id (a cohort pair id reproduces `namd sample`), or without one a digest of the
    crop, so each patient has its own noises and a prediction is reproducible. The
    evaluator is the run's own, trained on real crops only.
    """
    from namd.config import load_config
    from namd.models.evaluator import load_evaluator, predict
    from namd.sampling import FollowUpSampler

    run = run if isinstance(run, RunDir) else RunDir(run)
    config = with_sampling(config or load_config(base=run.saved_config()), k, steps)
    crop = baseline_hu(baseline, config, "baseline crop", units)
    digest = crop_digest(crop)
    seed_key = key if key else f"crop-sha256:{digest[:32]}"
    ehr.check("patient" if key is None else key)
    sampler = FollowUpSampler.from_run(run, variant_dirs(), config)
    latents = sampler.generate(sampler.conditioning([seed_key], crop[None], [ehr]), config.sampling)
    samples = sampler.decode(latents[0])
    model, window, _ = load_evaluator(run.require("evaluator", "predict"))
    p_base, _ = predict(model, crop[None], window)
    p_follow, _ = predict(model, samples, window)
    brock = brock_probability(ehr)
    return Prediction(report_sentence=report_sentence(ehr), p_baseline=float(p_base[0]),
                      p_followup=[float(p) for p in p_follow],
                      p_followup_mean=float(p_follow.mean()), p_followup_std=float(p_follow.std()),
                      brock=None if np.isnan(brock) else float(brock), k=len(samples),
                      steps=config.sampling.steps, sampling=config.sampling.model_dump(mode="json"),
                      seed_from="id" if key else "crop", baseline_sha256=digest, samples=samples)


def read_record(path: str | Path) -> dict:
    """The JSON object of an EHR file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EHR file not found: {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object of EHR fields")
    return record


def load_patient(path: str | Path) -> tuple[EHR, str | None]:
    """A patient's EHR and id (ehr.ID_KEYS, with nodule_id) from a JSON object with the 13
    fields (absent or null = missing); an unknown key is an EHRError naming it."""
    record = read_record(path)
    return EHR.from_mapping(record, record=str(path)), record_id(record)


def load_ehr(path: str | Path) -> EHR:
    """A patient's EHR from a JSON object with the 13 fields (absent or null = missing)."""
    return load_patient(path)[0]
