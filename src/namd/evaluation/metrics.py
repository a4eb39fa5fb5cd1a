"""Diagnosis metrics of `namd evaluate`: AUROC / AUPRC, bootstrap intervals, paired tests.

AUROC and AUPRC come from scikit-learn (AUPRC is its average precision, the usual estimator of
the area under the precision-recall curve); on bootstrap resamples the same two values are
computed by vectorised formulas (tested equal to scikit-learn). Bootstrap resamples are
stratified by label (as pROC does by default), so every resample holds both classes and the
class balance of the test set. The paired AUROC test is the fast DeLong test (DeLong et al. 1988; Sun & Xu 2014), which
no library in the dependency set provides; a paired bootstrap test is offered for any metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

Metric = Callable[[np.ndarray, np.ndarray], float]


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints and finite scores of the same length, or a clear error."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {score.shape} must be equal-length vectors")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    if not np.isfinite(score).all():
        raise ValueError(f"{int((~np.isfinite(score)).sum())} score(s) are not finite")
    return y.astype(np.int64), score


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    y, score = _check(y, score)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (NaN without positives)."""
    y, score = _check(y, score)
    return float(average_precision_score(y, score)) if y.sum() > 0 else float("nan")


METRICS: dict[str, Metric] = {"auroc": auroc, "auprc": auprc}


def batched_auroc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of (B, N) labels and scores by the rank-sum formula (ties count one
    half): the same value as scikit-learn, vectorised for thousands of bootstrap resamples."""
    ranks = rankdata(scores, axis=1)
    m = y.sum(axis=1)
    n = y.shape[1] - m
    return ((ranks * y).sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def batched_auprc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn computes it (tied scores form one
    threshold): sum over thresholds of (recall step) x precision."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    tp = np.cumsum(np.take_along_axis(y, order, axis=1), axis=1)
    end = np.ones_like(s, dtype=bool)  # last position of each group of tied scores
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    tp_end = np.where(end, tp, 0)
    previous = np.concatenate([np.zeros((len(s), 1)), np.maximum.accumulate(tp_end, axis=1)[:, :-1]],
                              axis=1)
    precision = tp / np.arange(1, s.shape[1] + 1)
    return (end * (tp - previous) * precision).sum(axis=1) / tp[:, -1]


BATCHED = {"auroc": batched_auroc, "auprc": batched_auprc}


def stratified_resamples(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) index arrays drawn with replacement within each class (same class sizes)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return np.concatenate([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))],
                          axis=1)


def bootstrap(y: np.ndarray, score: np.ndarray, metric: str, n_boot: int,
              seed: int) -> np.ndarray:
    """The metric ("auroc" or "auprc") on `n_boot` stratified bootstrap resamples of nodules."""
    y, score = _check(y, score)
    idx = stratified_resamples(y, n_boot, seed)
    return BATCHED[metric](y[idx], score[idx])


def bootstrap_ci(y: np.ndarray, score: np.ndarray, metric: str, n_boot: int,
                 level: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric."""
    values = bootstrap(y, score, metric, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_bootstrap_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                          metric: str, n_boot: int, seed: int) -> dict[str, float]:
    """Two-sided paired bootstrap test of metric(a) - metric(b) on the same nodules.

    p = 2 x the smaller share of resampled differences on either side of zero (capped at 1).
    """
    y, a = _check(y, score_a)
    _, b = _check(y, score_b)
    idx = stratified_resamples(y, n_boot, seed)
    diffs = BATCHED[metric](y[idx], a[idx]) - BATCHED[metric](y[idx], b[idx])
    p = 2.0 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"delta": METRICS[metric](y, a) - METRICS[metric](y, b), "p_value": float(min(1.0, p)),
            "test": "paired bootstrap"}


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (R,) and their DeLong covariance matrix (R, R) for R score vectors (R, N).

    Fast algorithm of Sun & Xu (2014): placement values from mid-ranks, O(R N log N).
    """
    y = np.asarray(y)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two nodules per class, has {m} malignant, {n} benign")
    tx = rankdata(pos, axis=1)  # mid-ranks within the malignant nodules
    ty = rankdata(neg, axis=1)  # within the benign nodules
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # within all nodules
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n  # placement of each malignant nodule among the benign ones
    v01 = 1.0 - (tz[:, m:] - ty) / m  # placement of each benign nodule among the malignant ones
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """Two-sided DeLong test of AUROC(a) - AUROC(b) on the same nodules (paired)."""
    y, a = _check(y, score_a)
    _, b = _check(y, score_b)
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    delta = float(aucs[0] - aucs[1])
    if var <= 1e-15:  # identical rankings: no evidence of a difference
        return {"delta_auroc": delta, "z": 0.0, "p_value": 1.0, "test": "DeLong"}
    z = delta / float(np.sqrt(var))
    return {"delta_auroc": delta, "z": z, "p_value": float(2.0 * norm.sf(abs(z))), "test": "DeLong"}


def summary(values: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation over runs (population std, 0 for a single run).

    The paper reports mean +- std over its K = 20 runs without naming the estimator.
    """
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def score_block(y: np.ndarray, runs: np.ndarray, n_boot: int, level: float,
                seed: int) -> dict:
    """The metrics of one table row from scores `runs` (K, N): K = 1 for single-run rows.

    Per metric: mean and std over the K runs (the paper's numbers) and a bootstrap interval of
    that same statistic, the metric averaged over the K runs: each resample of nodules is
    scored in every run and the K values averaged, so the interval brackets the mean it goes
    with. With K > 1 also the metrics of the mean probability over K, with their own interval.
    """
    runs = np.atleast_2d(np.asarray(runs, dtype=np.float64))
    y = np.asarray(y)
    mean_score = runs.mean(axis=0)
    idx = stratified_resamples(y, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    out: dict = {"k": int(runs.shape[0])}
    for name, metric in METRICS.items():
        block = summary(np.array([metric(y, r) for r in runs]))
        resampled = np.mean([BATCHED[name](y[idx], r[idx]) for r in runs], axis=0)
        block["ci95"] = [float(v) for v in np.nanquantile(resampled, [alpha, 1.0 - alpha])]
        out[name] = block
    if runs.shape[0] > 1:
        out["mean_prob_auroc"] = auroc(y, mean_score)
        out["mean_prob_auprc"] = auprc(y, mean_score)
        out["mean_prob_ci95"] = {name: list(bootstrap_ci(y, mean_score, name, n_boot, level, seed))
                                 for name in METRICS}
    return out
