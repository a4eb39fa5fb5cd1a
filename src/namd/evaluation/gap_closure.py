"""Gap closure: how much of the way from the real baseline to the real follow-up does a
generated follow-up go, in AUROC?

    closure = (AUROC(variant) - AUROC(real_baseline)) / (AUROC(real_followup) - AUROC(real_baseline))

0 = the generated follow-up diagnoses no better than the baseline it came from, 1 = as well as
the real follow-up; above 1 is allowed. The paper's claim rests on this one number (0.82).

Primary figure: the variant's AUROC of the mean probability over its K runs (the score its
paired tests use). Interval: a paired percentile bootstrap over nodules, stratified by label:
each draw resamples the nodules once and computes all three AUROCs on that same resample, so
numerator and denominator move together. Draws whose denominator is <= 0 (the resampled real
follow-up does not beat the resampled baseline) have no ratio: they are dropped and counted.
Secondary figure, point only: the same ratio with the variant's AUROC averaged over its K runs
(the paper's "mean over K" table number).

The clinical rows that read the record directly (brock, ehr_logistic, baseline_plus_ehr) get
the same figure under `reference`: how much of the gap the record's information closes without
any generated image, the yardstick for how much a record-conditioned generator could add.

Written as the `gap_closure` block of RUN/eval/metrics.json (docs/metrics-schema.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from namd.config import EvalConfig
from namd.evaluation import metrics
from namd.evaluation.rows import generated, listed

REFERENCE_ROWS = ("brock", "ehr_logistic", "baseline_plus_ehr")  # no generated image
PAPER_CLOSURE = 0.82  # the paper's gap closure of NAMD, the report's reference point
DEFINITION = ("(AUROC(variant) - AUROC(real_baseline)) / (AUROC(real_followup) - "
              "AUROC(real_baseline)); AUROC of the variant's mean probability over its K runs")


class Scores(Protocol):
    """A scored table row as `namd evaluate` holds it: runs (K, N) or None, and a status."""

    runs: np.ndarray | None
    status: str


def ratio(variant: float, baseline: float, followup: float) -> float | None:
    """(variant - baseline) / (followup - baseline), None when the denominator is <= 0."""
    gap = followup - baseline
    return (variant - baseline) / gap if gap > 0 else None


def closure_draws(y: np.ndarray, baseline: np.ndarray, followup: np.ndarray, variant: np.ndarray,
                  n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Gap closure on `n_boot` paired stratified resamples of the nodules (scores (N,) each):
    the kept ratios and how many draws were dropped for a denominator <= 0."""
    y = np.asarray(y)
    idx = metrics.stratified_resamples(y, n_boot, seed)
    ys = y[idx]
    base, follow, var = (metrics.batched_auroc(ys, np.asarray(s, dtype=np.float64)[idx])
                         for s in (baseline, followup, variant))
    gap = follow - base
    keep = gap > 0
    return (var[keep] - base[keep]) / gap[keep], int((~keep).sum())


def percentile_interval(draws: np.ndarray, level: float) -> list[float] | None:
    """Percentile interval at `level` of the draws, None when there are none."""
    if not len(draws):
        return None
    alpha = (1.0 - level) / 2.0
    return [float(v) for v in np.quantile(draws, [alpha, 1.0 - alpha])]


def variant_entry(y: np.ndarray, runs: np.ndarray, baseline: np.ndarray, followup: np.ndarray,
                  ev: EvalConfig) -> dict:
    """The gap closure of one generated variant (runs (K, N)) with its paired interval."""
    runs = np.atleast_2d(np.asarray(runs, dtype=np.float64))
    mean_prob = runs.mean(axis=0)
    a_base, a_follow = metrics.auroc(y, baseline), metrics.auroc(y, followup)
    a_var = metrics.auroc(y, mean_prob)
    a_runs = float(np.mean([metrics.auroc(y, r) for r in runs]))
    entry: dict = {"status": "ok", "k": int(runs.shape[0]), "real_baseline_auroc": a_base,
                   "real_followup_auroc": a_follow, "variant_auroc": a_var,
                   "point": ratio(a_var, a_base, a_follow), "ci95": None, "n_boot": ev.bootstrap,
                   "n_boot_denominator_nonpositive": None,
                   "mean_run_auroc": a_runs, "mean_run_point": ratio(a_runs, a_base, a_follow)}
    if entry["point"] is None:
        entry["status"] = (f"not defined: the real follow-up (AUROC {a_follow:.3f}) does not beat "
                           f"the real baseline (AUROC {a_base:.3f}), so there is no gap to close")
        return entry
    draws, dropped = closure_draws(y, baseline, followup, mean_prob, ev.bootstrap, ev.seed)
    entry["ci95"] = percentile_interval(draws, ev.ci)
    entry["n_boot_denominator_nonpositive"] = dropped
    return entry


def gap_closure_block(y: np.ndarray, scored: Mapping[str, Scores], ev: EvalConfig) -> dict:
    """The `gap_closure` block of metrics.json from the scored rows of `namd evaluate`: the
    single-run real_baseline and real_followup rows (always scored there) and the generated
    variants (K, N); a variant that did not run keeps only its status."""
    block: dict = {
        "definition": DEFINITION, "paper": PAPER_CLOSURE,
        "bootstrap": {"n": ev.bootstrap, "level": ev.ci, "seed": ev.seed, "stratified": True,
                      "resampled": "nodules, within each label; the three AUROCs of a draw on "
                                   "the same resample (paired)"},
        "generated": {}}
    base, follow = scored["real_baseline"], scored["real_followup"]
    for name in (n for n in generated() if listed(n, scored)):
        row = scored.get(name)
        if row is None or row.runs is None:
            block["generated"][name] = {"status": "not run: not scored" if row is None
                                        else row.status}
            continue
        block["generated"][name] = variant_entry(y, row.runs, base.runs[0], follow.runs[0], ev)
    # what models that see the record (and the baseline) directly, with no generated image, close:
    # how much of the gap the record's information could close here (issue 18)
    block["reference"] = {name: variant_entry(y, scored[name].runs, base.runs[0], follow.runs[0], ev)
                          for name in REFERENCE_ROWS
                          if scored.get(name) is not None and scored[name].runs is not None}
    return block
