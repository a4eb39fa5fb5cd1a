"""One prediction of `namd serve` as the page shows it and its bundle stores it, and the crop it
started from: below the session, the readout and the bundle, which all hold one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from namd.cohort.ehr import EHR
from namd.inference.prediction import Prediction


@dataclass
class Baseline:
    """The crop a prediction starts from, the key its noises are seeded from (None: the crop's
    digest) and how it was made (prediction.json's `baseline`: no path, no id)."""

    crop: np.ndarray
    key: str | None
    source: dict[str, Any]
    followup: np.ndarray | None = None
    label: int | None = None
    ehr: EHR | None = None


@dataclass
class Result:
    """One prediction as the page shows it and the bundle stores it."""

    prediction: Prediction
    baseline: Baseline
    ehr: EHR
    p_real_followup: float | None = None
    window: tuple[float, float] = (-1000.0, 400.0)
    spacing_mm: float = 1.0
    bundle: Path | None = field(default=None, repr=False)
