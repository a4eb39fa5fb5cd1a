"""Predictions for one new patient: K virtual one-year follow-ups of a baseline crop and the
malignancy estimate they support, from a trained run (the Python API behind `namd predict`).

    from namd.inference.patient import predict_patient
    result = predict_patient("runs/demo", baseline_hu, EHR.from_mapping(record), key="patient 7")
    result.p_followup_mean, result.p_followup_std, result.samples  # (K, H, W) HU

Every number (k, steps) goes through the typed config, and provenance records the values
used. A patient's K initial noises come from its id (`key`) or, without one, from a hash of
its crop, so two patients never share them. A crop that looks windowed (every value
within 0..255 or 0..1, whatever its dtype: a lung crop in HU always has values below 0) is
refused where HU are expected, unless units say so (windowed_uint8, windowed_unit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from namd.cohort.ehr import EHR, record_id
from namd.config import NamdConfig
from namd.inference.prediction import Prediction, baseline_hu, with_sampling
from namd.run.layout import RunDir


def predict_patient(run: str | Path | RunDir, baseline: np.ndarray, ehr: EHR,
                    config: NamdConfig | None = None, k: int | None = None,
                    steps: int | None = None, key: str | None = None,
                    units: str = "HU", device: str | None = None) -> Prediction:
    """K virtual follow-ups of one baseline crop, conditioned on its EHR, and their scores:
    `NAMDPipeline.from_run(run).predict` for one patient (load the pipeline once instead when
    predicting for many).

    Sample k uses the seed rule of `namd sample` (sampling.seed, key, k): `key` is the
    patient's id (a cohort pair id reproduces `namd sample`), or without one a digest of the
    crop, so each patient has its own noises and a prediction is reproducible. The
    evaluator is the run's own, trained on real crops only.
    """
    from namd.config import load_config
    from namd.inference.pipeline import NAMDPipeline

    run = run if isinstance(run, RunDir) else RunDir(run)
    config = with_sampling(config or load_config(base=run.saved_config()), k, steps)
    baseline_hu(baseline, config, "baseline crop", units)  # input errors before any model loads
    pipe = NAMDPipeline.from_run(run, device=device, config=config)
    return pipe.predict([baseline], [ehr], keys=[key], units=units)[0]


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
