"""The readout against what happened: for each row (a generator's K samples, the baseline's
copy, the real follow-up itself) the most likely follow-up category against the real one
(weighted kappa, confusion matrix), and P(growth > 1.5 mm) and P(4A or higher) as scores of
the real growth and category (AUROC, Brier, reliability points), Brock's probability beside them
as the record-only risk score.

What happened is read by the same measurer: the real follow-up crop against the real baseline
(`real_outcome`: less the measurer's bias, as the readout's draws, but no drawn error), and,
where the cohort records diameters at both visits, the recorded growth (`recorded_growth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from namd.clinical import lungrads as L
from namd.clinical.readout import finding
from namd.cohort.ehr import EHR
from namd.config.readout import ReadoutConfig
from namd.evaluation.calibration_metrics import brier, reliability
from namd.evaluation.measure import Measurements
from namd.evaluation.metrics import auroc

RELIABILITY_BINS = 5


def confusion(real: Sequence[str], predicted: Sequence[str]) -> list[list[int]]:
    """Counts (real category rows x predicted category columns) over lungrads.CATEGORIES."""
    index = {c: i for i, c in enumerate(L.CATEGORIES)}
    out = np.zeros((len(L.CATEGORIES),) * 2, dtype=int)
    for a, b in zip(real, predicted, strict=True):
        out[index[a], index[b]] += 1
    return out.tolist()


def weighted_kappa(real: Sequence[str], predicted: Sequence[str], power: int = 1) -> float:
    """Cohen's kappa weighted by |i - j|^power over the ordered categories (2 < 3 < 4A < 4B <
    4X; power 1 linear, 2 quadratic); NaN when the expected disagreement is 0."""
    table = np.asarray(confusion(real, predicted), dtype=np.float64)
    n = table.sum()
    if n == 0:
        return float("nan")
    idx = np.arange(len(L.CATEGORIES))
    w = np.abs(idx[:, None] - idx[None, :]).astype(np.float64) ** power
    expected = np.outer(table.sum(1), table.sum(0)) / n
    denominator = float((w * expected).sum())
    return float("nan") if denominator == 0 else 1.0 - float((w * table).sum()) / denominator


def real_outcome(base: Measurements, follow: Measurements, kind: str | None, spiculated: bool,
                 cfg: ReadoutConfig) -> dict[str, Any]:
    """The real growth (mm of mean diameter) and follow-up category of one pair, both crops
    measured by the same measurer (0-d Measurements); status says why when one is not
    measurable."""
    if kind is None or not bool(base.measurable) or not bool(follow.measurable):
        return {"status": "not measurable"}
    prior = finding(base, kind, spiculated, cfg, follow_up=False)
    current = finding(follow, kind, spiculated, cfg, follow_up=True)
    category = L.followup_category(prior, current, cfg.interval_days, cfg.version).category
    return {"status": "ok", "growth_mm": current.mean_mm - prior.mean_mm, "category": category}


def recorded_growth(before: EHR, after: EHR) -> float | None:
    """The growth of the recorded mean diameters (long and perpendicular), None where either
    visit lacks one."""
    sizes = [(e.SCT_LONG_DIA, e.SCT_PERP_DIA) for e in (before, after)]
    if any(v is None for pair in sizes for v in pair):
        return None
    (a, b), (c, d) = sizes
    return L.mean_diameter(c, d) - L.mean_diameter(a, b)


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """AUROC, Brier and reliability points of probabilities p for outcomes y."""
    return {"n": int(len(y)), "positives": int(y.sum()), "auroc": auroc(y, p),
            "brier": brier(y, p), "reliability": reliability(y, p, RELIABILITY_BINS)}


def score_row(readouts: Sequence[dict[str, Any]], outcomes: Sequence[dict[str, Any]],
              brock: Sequence[float | None], recorded: Sequence[float | None]) -> dict[str, Any]:
    """One row's agreement with what happened, over the nodules whose readout and real outcome
    both exist (the others are counted)."""
    used = [i for i, (r, o) in enumerate(zip(readouts, outcomes, strict=True))
            if r["followup"].get("status") == "ok" and o["status"] == "ok"]
    if not used:
        return {"status": "no nodule with both a readout and a measurable real pair",
                "n": 0, "left_out": len(readouts)}
    f = [readouts[i]["followup"] for i in used]
    real_cat = [outcomes[i]["category"] for i in used]
    likely = [x["most_likely"] for x in f]
    grew = np.array([outcomes[i]["growth_mm"] > L.GROWTH_MM for i in used], dtype=int)
    high = np.array([L.at_least_4a(c) for c in real_cat], dtype=int)
    p_growth = np.array([x["p_growth_gt_1_5mm"] for x in f])
    p_high = np.array([x["p_4a_or_higher"] for x in f])
    out = {"status": "ok", "n": len(used), "left_out": len(readouts) - len(used),
           "kappa_linear": weighted_kappa(real_cat, likely, 1),
           "kappa_quadratic": weighted_kappa(real_cat, likely, 2),
           "exact_agreement": float(np.mean([a == b for a, b in zip(real_cat, likely, strict=True)])),
           "confusion": confusion(real_cat, likely),
           "growth": _scores(grew, p_growth), "at_least_4a": _scores(high, p_high)}
    rec = [(recorded[i], p) for i, p in zip(used, p_growth, strict=True) if recorded[i] is not None]
    if rec:
        y = np.array([g > L.GROWTH_MM for g, _ in rec], dtype=int)
        out["growth_recorded"] = _scores(y, np.array([p for _, p in rec]))
    known = [(brock[i], grew[j], high[j]) for j, i in enumerate(used) if brock[i] is not None]
    if known:
        b = np.array([k[0] for k in known])
        out["brock"] = {"n": len(known), "auroc_growth": auroc(np.array([k[1] for k in known]), b),
                        "auroc_at_least_4a": auroc(np.array([k[2] for k in known]), b)}
    return out
