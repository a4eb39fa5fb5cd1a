"""Calibration of the evaluator's probability (Platt scaling on the validation split).

The evaluator is trained with a positive-class weight (pos_weight = n_benign / n_malignant),
which shifts its outputs towards malignant: its sigmoid is a ranking score, not a probability.
Platt scaling fits p_cal = sigmoid(slope * logit(p_raw) + intercept), a 1-D logistic
regression (scikit-learn) on the labelled real crops of the validation split. The map is
monotonic, so it changes no AUROC or AUPRC of a single run; it changes the mean over K samples,
Brier score and ECE.

The validation split can hold few malignant crops: the fit keeps scikit-learn's L2 penalty on
the slope (C = PLATT_C), which pulls the slope towards 0 (less confident, never more), and the
note says so. Without a malignant or a benign label no calibration is fitted, nor when the
fitted slope is not positive (the evaluator ranks the validation crops backwards: a map with
that slope would invert every probability); the status says why and `apply` is the identity.
A stored fit is read back only with a positive slope and a method this module implements.

Stored as RUN/evaluator/calibration.json; `load_calibration` returns None when there is none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from namd.run.contract import RunFileError
from namd.run.provenance import atomic_write_json
from namd.run.readers import read_json

CALIBRATION_FILE = "calibration.json"
PLATT_C = 1.0  # inverse L2 strength of the slope (scikit-learn's default): a modest shrinkage
FEW_POSITIVES = 30  # below this many malignant validation crops the note warns about the fit
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit
METHODS = ("platt", "none")  # what `evaluator.calibration` can ask for; only platt is fitted


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped away from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class Calibration:
    """A fitted (or deliberately absent) map from raw to calibrated probabilities."""

    method: str  # "platt" | "none"
    slope: float | None
    intercept: float | None
    n: int  # labelled validation crops it saw
    n_pos: int  # of which malignant
    status: str = "ok"  # "ok" or "not fitted: <why>"
    note: str = ""

    @property
    def fitted(self) -> bool:
        """Whether `apply` changes anything."""
        return self.status == "ok" and self.slope is not None and self.intercept is not None

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw ones, elementwise (any shape); a copy of `p` when
        nothing was fitted."""
        p = np.asarray(p, dtype=np.float64)
        if not self.fitted:
            return p.copy()
        z = self.slope * logit(p) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def describe(self) -> str:
        """Which probability `apply` gives, in words (for metrics.json and Prediction)."""
        return "calibrated (Platt, validation split)" if self.fitted else "raw"

    def save(self, path: Path) -> None:
        """Write the calibration as JSON, atomically."""
        atomic_write_json(Path(path), asdict(self))


def not_fitted(method: str, why: str, n: int = 0, n_pos: int = 0) -> Calibration:
    """A Calibration that leaves probabilities raw, saying why."""
    return Calibration(method, None, None, n, n_pos, status=f"not fitted: {why}")


def fit_platt(p_raw: np.ndarray, y: np.ndarray, c: float = PLATT_C) -> Calibration:
    """Platt scaling of raw probabilities `p_raw` (N,) against labels `y` (N,) in {0, 1}."""
    from sklearn.linear_model import LogisticRegression

    p_raw, y = np.asarray(p_raw, dtype=np.float64).ravel(), np.asarray(y).ravel()
    if p_raw.shape != y.shape:
        raise ValueError(f"fit_platt: {p_raw.shape[0]} probabilities but {y.shape[0]} labels")
    n, n_pos = int(len(y)), int((y == 1).sum())
    if n_pos == 0 or n_pos == n:
        missing = "malignant" if n_pos == 0 else "benign"
        return not_fitted("platt", f"the validation split has no {missing} crop "
                          f"({n} labelled, {n_pos} malignant)", n, n_pos)
    model = LogisticRegression(C=c, solver="lbfgs").fit(logit(p_raw)[:, None], y.astype(int))
    slope = float(model.coef_[0, 0])
    if not slope > 0:  # a map that flattens or inverts the evaluator's ranking is no calibration
        return not_fitted("platt", f"the fitted slope is {slope:.3g}: on the validation split "
                          "the evaluator ranks benign crops as high as malignant ones or higher, "
                          "so no monotonic calibration exists; probabilities stay raw", n, n_pos)
    note = f"1-D logistic regression on logit(p), L2 on the slope with C = {c:g}"
    if n_pos < FEW_POSITIVES:
        note += (f"; only {n_pos} malignant validation crops (fewer than {FEW_POSITIVES}): the "
                 "penalty pulls the slope towards 0, so the fit errs towards less confident "
                 "probabilities, and it stays rough")
    return Calibration("platt", slope, float(model.intercept_[0]), n, n_pos, note=note)


def _number(value: object, path: Path, key: str) -> float:
    """A finite float of calibration.json, else RunFileError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunFileError(path, f"{key} must be a finite number, is {value!r}", writer="evaluator")
    return float(value)


def read_calibration(path: Path) -> Calibration:
    """The Calibration stored in `path`, checked for syntax and meaning: a method this namd
    implements, and for a fit ("ok") Platt's finite coefficients with a positive slope (a slope
    <= 0 would flatten or invert every probability); RunFileError when missing or damaged."""
    data = read_json(path, "evaluator", keys=("method", "n", "n_pos", "status"))
    method, status = data["method"], data["status"]
    if method not in METHODS:
        raise RunFileError(path, f"method {method!r} is not one this namd implements "
                           f"({', '.join(METHODS)})", writer="evaluator")
    if not isinstance(status, str) or not (status == "ok" or status.startswith("not fitted")):
        raise RunFileError(path, f"status {status!r} is neither 'ok' nor 'not fitted: <why>'",
                           writer="evaluator")
    coefs = (None, None)
    if status == "ok":
        if method != "platt":
            raise RunFileError(path, f"status 'ok' with method {method!r}: only 'platt' is "
                               "fitted", writer="evaluator")
        coefs = tuple(_number(data.get(k), path, k) for k in ("slope", "intercept"))
        if coefs[0] <= 0:
            raise RunFileError(path, f"slope {coefs[0]:g} is not positive: it would flatten or "
                               "invert every probability", writer="evaluator")
    n, n_pos = (_count(data[k], path, k) for k in ("n", "n_pos"))
    if n_pos > n:
        raise RunFileError(path, f"n_pos {n_pos} exceeds n {n}", writer="evaluator")
    return Calibration(method, *coefs, n, n_pos, status, str(data.get("note", "")))


def _count(value: object, path: Path, key: str) -> int:
    """A whole number >= 0 of calibration.json, else RunFileError."""
    number = _number(value, path, key)
    if number < 0 or number != int(number):
        raise RunFileError(path, f"{key} must be a whole number >= 0, is {value!r}",
                           writer="evaluator")
    return int(number)


def load_calibration(evaluator_dir: Path) -> Calibration | None:
    """The fitted calibration of a trained evaluator (RUN/evaluator/calibration.json); None when
    the file is absent (an evaluator trained before calibration existed) or records no fit.
    A damaged file is a RunFileError."""
    path = Path(evaluator_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = read_calibration(path)
    return calibration if calibration.fitted else None


def calibration_status(evaluator_dir: Path) -> tuple[Calibration | None, str]:
    """The fitted calibration (or None) and a status saying why there is none."""
    path = Path(evaluator_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, (f"absent: {path} not found (an evaluator trained before calibration; "
                      "retrain it with `namd train evaluator --overwrite` to calibrate)")
    calibration = read_calibration(path)
    return (calibration if calibration.fitted else None), calibration.status
