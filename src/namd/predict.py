"""Predictions for one new patient: K virtual one-year follow-ups of a baseline crop and the
malignancy estimate they support, from a trained run (the Python API behind `namd predict`).

    from namd.predict import predict_patient
    result = predict_patient("runs/demo", baseline_hu, EHR.from_mapping(record))
    result.p_followup_mean, result.p_followup_std, result.samples  # (K, H, W) HU
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR, report_sentence
from namd.config import NamdConfig
from namd.rundir import RunDir, variant_dirs


@dataclass
class Prediction:
    """What one patient gets: the evaluator on the real baseline and on each virtual follow-up."""

    report_sentence: str
    p_baseline: float
    p_followup: list[float]
    p_followup_mean: float
    p_followup_std: float
    brock: float | None
    k: int
    samples: np.ndarray = field(repr=False)

    def as_json(self) -> dict:
        """The numbers, without the image array."""
        out = asdict(self)
        out.pop("samples")
        return out


def check_crop(crop: np.ndarray, size: int, source: str) -> np.ndarray:
    """A baseline crop as float32 HU of the run's crop size, or a one-line error naming `source`."""
    crop = np.asarray(crop)
    if crop.shape != (size, size):
        raise ValueError(f"{source}: crop has shape {crop.shape}, the run expects ({size}, {size}) "
                         "HU at data.pixel_spacing_mm (cut one with --image and --center)")
    if not np.issubdtype(crop.dtype, np.number) or not np.isfinite(crop).all():
        raise ValueError(f"{source}: crop must hold finite numbers (HU)")
    if crop.min() < -2000 or crop.max() > 4000:
        raise ValueError(f"{source}: values {crop.min():.0f}..{crop.max():.0f} do not look like HU")
    return crop.astype(np.float32)


def predict_patient(run: str | Path | RunDir, baseline_hu: np.ndarray, ehr: EHR,
                    config: NamdConfig | None = None, k: int | None = None,
                    steps: int | None = None, key: str = "patient") -> Prediction:
    """K virtual follow-ups of one baseline crop, conditioned on its EHR, and their scores.

    Sample k uses the same seed rule as `namd sample` (seed, key, k), so a prediction is
    reproducible; the evaluator is the run's own, trained on real crops only.
    """
    from namd.config import load_config
    from namd.models.evaluator import load_evaluator, predict
    from namd.sampling import FollowUpSampler

    run = run if isinstance(run, RunDir) else RunDir(run)
    config = config or load_config(base=run.saved_config())
    sampling = config.sampling.model_copy(update={k_: v for k_, v in (("k", k), ("steps", steps)) if v})
    crop = check_crop(baseline_hu, config.data.crop_size, "baseline crop")
    ehr.check(key)
    sampler = FollowUpSampler.from_run(run, variant_dirs(), config)
    latents = sampler.generate(sampler.conditioning([key], crop[None], [ehr]), sampling)
    samples = sampler.decode(latents[0])
    model, window, _ = load_evaluator(run.require("evaluator", "predict"))
    p_base, _ = predict(model, crop[None], window)
    p_follow, _ = predict(model, samples, window)
    brock = brock_probability(ehr)
    return Prediction(report_sentence=report_sentence(ehr), p_baseline=float(p_base[0]),
                      p_followup=[float(p) for p in p_follow],
                      p_followup_mean=float(p_follow.mean()), p_followup_std=float(p_follow.std()),
                      brock=None if np.isnan(brock) else float(brock), k=len(samples), samples=samples)


def load_ehr(path: str | Path) -> EHR:
    """A patient's EHR from a JSON object with the 13 fields (absent or null = missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EHR file not found: {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object of EHR fields")
    return EHR.from_mapping(record, record=str(path))
