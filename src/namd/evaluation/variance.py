"""Prediction variance over the K virtual follow-ups (paper 4.3 and Appendix D).

Per nodule: the mean probability p_bar over the K runs, the variance Var(p) over the runs
(population variance, numpy's default: the paper does not name the estimator) and the error
|L - p_bar|. Summaries: error versus variance (Spearman correlation and the paper's three
groups), variance by true label, and the running variance of the first k runs, k = 1..K, whose
flattening is the paper's argument for K = 20.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

# The paper's groups (Figure 3) are described, not defined; here a nodule is "unsure" when its
# variance is in the top quarter of the test set, otherwise confidently correct or incorrect by
# whether its mean probability lies on the right side of 0.5.
UNSURE_QUANTILE = 0.75
DECISION = 0.5
STABLE_TOLERANCE = 0.05  # running variance within 5% of its value at K counts as stable


def per_nodule(probs: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """mean_prob, variance, error and group of each nodule from probabilities (N, K)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probabilities {probs.shape} must be (N, K) with N = {len(y)} labels")
    mean = probs.mean(axis=1)
    var = probs.var(axis=1)
    error = np.abs(np.asarray(y, dtype=np.float64) - mean)
    cut = np.quantile(var, UNSURE_QUANTILE)
    group = np.where(var >= cut, "unsure",
                     np.where(error < DECISION, "confidently correct", "confidently incorrect"))
    if np.all(var == var[0]):  # no spread at all (e.g. K = 1): nobody is unsure
        group = np.where(error < DECISION, "confidently correct", "confidently incorrect")
    return pd.DataFrame({"label": np.asarray(y, dtype=int), "mean_prob": mean, "variance": var,
                         "error": error, "group": group})


def running_variance(probs: np.ndarray) -> np.ndarray:
    """(N, K): column k-1 is the variance of each nodule's first k probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    k = np.arange(1, probs.shape[1] + 1)
    mean = np.cumsum(probs, axis=1) / k
    mean_sq = np.cumsum(probs**2, axis=1) / k
    return np.maximum(mean_sq - mean**2, 0.0)


def stable_k(curve: np.ndarray, tolerance: float = STABLE_TOLERANCE) -> int:
    """Smallest k from which a running-variance curve stays within `tolerance` (relative) of
    its final value; K when it never settles earlier."""
    final = curve[-1]
    outside = np.abs(curve - final) > tolerance * max(abs(final), 1e-12)
    bad = np.flatnonzero(outside)
    return int(bad[-1] + 2) if len(bad) else 1


def _describe(values: np.ndarray) -> dict[str, float]:
    """n, mean, median and quartiles of a vector."""
    if len(values) == 0:
        return {"n": 0}
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(q50),
            "q25": float(q25), "q75": float(q75)}


def variance_summary(probs: np.ndarray, y: np.ndarray) -> dict:
    """The `variance` block of metrics.json for one generated variant."""
    table = per_nodule(probs, y)
    run = running_variance(probs)
    mean_curve = run.mean(axis=0)
    rho = (spearmanr(table["variance"], table["error"]).statistic
           if table["variance"].nunique() > 1 and table["error"].nunique() > 1 else float("nan"))
    return {
        "k": int(run.shape[1]),
        "variance_estimator": "population (ddof=0) over the K runs",
        "per_label": {str(lab): {"variance": _describe(g["variance"].to_numpy()),
                                 "error": _describe(g["error"].to_numpy())}
                      for lab, g in table.groupby("label")},
        "error_vs_variance": {
            "spearman_rho": float(rho),
            "groups": {name: {"n": int((table["group"] == name).sum()),
                              "malignant": int(((table["group"] == name) & (table["label"] == 1)).sum())}
                       for name in ("confidently correct", "unsure", "confidently incorrect")},
            "unsure_variance_threshold": float(np.quantile(table["variance"], UNSURE_QUANTILE)),
        },
        "running_variance_vs_k": [
            {"k": i + 1, "mean": float(mean_curve[i]), "median": float(np.median(run[:, i])),
             "q90": float(np.quantile(run[:, i], 0.9))} for i in range(run.shape[1])],
        "stable_k_mean_curve": stable_k(mean_curve),
        "stable_k_per_nodule_median": int(np.median([stable_k(r) for r in run])),
        "stable_tolerance": STABLE_TOLERANCE,
    }
