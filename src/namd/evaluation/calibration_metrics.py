"""Calibration measures of `namd evaluate`: Brier score, expected calibration error and the
reliability curve, per image row, of the raw and of the calibrated probability.

Every measure is of the row's score, as in the comparison table: the probability for single-run
rows, the mean over the K sample runs for generated rows (each sample calibrated before the
mean). ECE uses BINS equal-width bins on [0, 1]: sum over non-empty bins of
(n_bin / N) * |fraction malignant - mean probability|.
"""

from __future__ import annotations

import numpy as np

from namd.evaluation.rows import image_rows
from namd.models.calibration import Calibration

BINS = 10



def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def _bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability; 1.0 falls into the last bin."""
    return np.minimum((np.asarray(p, dtype=np.float64) * bins).astype(int), bins - 1)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> list[dict]:
    """Points of the reliability curve: per non-empty bin its edges, count, mean probability
    and fraction malignant."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    which = _bin_of(p, bins)
    points = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            points.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(inside.sum()),
                           "mean_prob": float(p[inside].mean()),
                           "frac_pos": float(y[inside].mean())})
    return points


def ece(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width bins (weighted by the bin's share)."""
    n = len(np.asarray(p))
    return float(sum(pt["n"] / n * abs(pt["frac_pos"] - pt["mean_prob"])
                     for pt in reliability(y, p, bins)))


def measures(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> dict:
    """Brier, ECE and reliability points of one score."""
    return {"brier": brier(y, p), "ece": ece(y, p, bins), "reliability": reliability(y, p, bins)}


def row_calibration(y: np.ndarray, raw_runs: np.ndarray, calibrated_runs: np.ndarray | None
                    ) -> dict:
    """One row of the block: raw and (when a calibration exists) calibrated measures of the
    mean over the runs (K, N)."""
    entry = {"status": "ok", "k": int(raw_runs.shape[0]),
             "raw": measures(y, raw_runs.mean(axis=0))}
    entry["calibrated"] = (None if calibrated_runs is None
                           else measures(y, calibrated_runs.mean(axis=0)))
    return entry


def calibration_block(calibration: Calibration | None, status: str, y: np.ndarray,
                      raw: dict[str, np.ndarray], calibrated: dict[str, np.ndarray],
                      statuses: dict[str, str]) -> dict:
    """The `calibration` block of metrics.json: how the probability was calibrated and, per
    image row, Brier / ECE / reliability of the raw and calibrated score (or the row's status)."""
    fitted = calibration is not None and calibration.fitted
    head = {"method": calibration.method if fitted else "none", "status": status,
            "fitted_on": "labelled real crops of the validation split (all kinds)",
            "bins": BINS, "of": "the row's score: the probability, or for generated rows the "
            "mean over the K runs of the per-sample (calibrated) probabilities"}
    if fitted:
        head.update(slope=calibration.slope, intercept=calibration.intercept,
                    n=calibration.n, n_pos=calibration.n_pos, note=calibration.note)
    rows = {}
    for name in image_rows():
        if name not in raw:
            rows[name] = {"status": statuses.get(name, "not run")}
            continue
        rows[name] = row_calibration(y, raw[name], calibrated.get(name) if fitted else None)
    return {**head, "rows": rows}
