"""Gap closure (AUROC of a variant between the real baseline's and the real follow-up's) and its
paired bootstrap: constructed scores whose closure is known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from namd.config import EvalConfig
from namd.evaluation import gap_closure, metrics

N, N_MAL = 200, 40
EV = EvalConfig(bootstrap=300, ci=0.95, seed=5)


@dataclass
class Row:
    """A scored row as `namd evaluate` holds it (its Scored)."""

    runs: np.ndarray | None = None
    status: str = "ok"


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """Labels, a weak baseline score and a strong follow-up score (AUROC ~0.64 and ~0.92)."""
    rng = np.random.default_rng(seed)
    y = np.zeros(N, dtype=int)
    y[rng.choice(N, N_MAL, replace=False)] = 1
    return y, 0.5 * y + rng.normal(size=N), 2.0 * y + rng.normal(size=N), rng


def _block(y, base, follow, variant_runs, ev: EvalConfig = EV, **others) -> dict:
    scored = {"real_baseline": Row(base[None]), "real_followup": Row(follow[None]),
              "namd": Row(np.atleast_2d(variant_runs)), **others}
    return gap_closure.gap_closure_block(y, scored, ev)


def test_variant_equal_to_the_real_followup_closes_the_whole_gap_in_every_draw():
    y, base, follow, _ = _data()
    entry = _block(y, base, follow, np.stack([follow, follow]))["generated"]["namd"]
    assert entry["status"] == "ok" and entry["k"] == 2
    assert entry["point"] == 1.0 and entry["ci95"] == [1.0, 1.0]
    assert entry["variant_auroc"] == entry["real_followup_auroc"] == pytest.approx(
        roc_auc_score(y, follow))
    # paired: every draw scores the three rows on the same nodules, so each ratio is exactly 1
    # (resampling the variant apart from the follow-up would scatter the draws around 1)
    draws, dropped = gap_closure.closure_draws(y, base, follow, follow, EV.bootstrap, EV.seed)
    assert dropped == 0 and len(draws) == EV.bootstrap
    assert np.all(draws == 1.0)


def test_variant_equal_to_the_real_baseline_closes_none_of_it():
    y, base, follow, _ = _data()
    entry = _block(y, base, follow, np.stack([base, base]))["generated"]["namd"]
    assert entry["point"] == 0.0 and entry["ci95"] == [0.0, 0.0]
    assert entry["mean_run_point"] == 0.0


def test_a_variant_between_baseline_and_followup_closes_part_of_it():
    y, base, follow, rng = _data()
    variant = y + rng.normal(size=N) + 0.5 * rng.normal(size=(3, N))  # K runs, AUROC ~0.74
    entry = _block(y, base, follow, variant)["generated"]["namd"]
    a_b, a_f = roc_auc_score(y, base), roc_auc_score(y, follow)
    a_v = roc_auc_score(y, variant.mean(0))
    assert entry["point"] == pytest.approx((a_v - a_b) / (a_f - a_b))
    assert 0.1 < entry["point"] < 0.9
    lo, hi = entry["ci95"]
    assert lo < entry["point"] < hi and hi - lo > 0.05
    # secondary figure: the per-run AUROCs averaged, point only
    a_runs = np.mean([roc_auc_score(y, r) for r in variant])
    assert entry["mean_run_auroc"] == pytest.approx(a_runs)
    assert entry["mean_run_point"] == pytest.approx((a_runs - a_b) / (a_f - a_b))
    assert entry["mean_run_point"] < entry["point"]  # averaging K noisy runs helps the mean prob


def test_a_variant_better_than_the_followup_closes_more_than_all_of_it():
    y, base, follow, rng = _data()
    entry = _block(y, base, follow, 4.0 * y + rng.normal(size=N))["generated"]["namd"]
    assert entry["point"] > 1.0 and entry["ci95"][1] > 1.0


@pytest.mark.parametrize("follow_sign", [0.0, -1.0])
def test_no_ratio_when_the_real_followup_does_not_beat_the_baseline(follow_sign):
    y, base, _, rng = _data()
    follow = base if follow_sign == 0 else 0.5 * follow_sign * y + rng.normal(size=N)
    entry = _block(y, base, follow, base + 0.1)["generated"]["namd"]
    assert entry["status"].startswith("not defined: the real follow-up")
    assert "does not beat the real baseline" in entry["status"]
    assert entry["point"] is None and entry["ci95"] is None and entry["mean_run_point"] is None
    assert entry["variant_auroc"] == pytest.approx(roc_auc_score(y, base))


def test_draws_with_a_nonpositive_denominator_are_dropped_and_counted():
    y, base, _, rng = _data()
    follow = base + 0.15 * y + 0.3 * rng.normal(size=N)  # barely better: many draws are not
    variant = base + 0.1 * y
    draws, dropped = gap_closure.closure_draws(y, base, follow, variant, EV.bootstrap, EV.seed)
    idx = metrics.stratified_resamples(y, EV.bootstrap, EV.seed)
    gap = metrics.batched_auroc(y[idx], follow[idx]) - metrics.batched_auroc(y[idx], base[idx])
    assert 0 < dropped == int((gap <= 0).sum()) and len(draws) + dropped == EV.bootstrap
    entry = _block(y, base, follow, variant)["generated"]["namd"]
    assert entry["status"] == "ok" and entry["point"] > 0  # on all nodules the gap is positive
    assert entry["n_boot_denominator_nonpositive"] == dropped and entry["n_boot"] == EV.bootstrap
    assert entry["ci95"] == gap_closure.percentile_interval(draws, EV.ci)


def test_the_interval_is_seeded():
    y, base, follow, rng = _data()
    variant = 1.0 * y + rng.normal(size=(2, N))
    first = _block(y, base, follow, variant)
    assert _block(y, base, follow, variant) == first
    other = _block(y, base, follow, variant, EvalConfig(bootstrap=300, ci=0.95, seed=6))
    assert other["generated"]["namd"]["ci95"] != first["generated"]["namd"]["ci95"]
    assert other["generated"]["namd"]["point"] == first["generated"]["namd"]["point"]
    boot = first["bootstrap"]
    assert (boot["n"], boot["level"], boot["seed"], boot["stratified"]) == (300, 0.95, 5, True)


def test_variants_that_did_not_run_keep_their_status():
    y, base, follow, _ = _data()
    block = _block(y, base, follow, follow,
                   no_align=Row(status="not run: samples_no_align not found"))
    assert list(block["generated"]) == ["namd", "no_align", "null_context"]
    assert block["generated"]["no_align"] == {"status": "not run: samples_no_align not found"}
    assert block["generated"]["null_context"]["status"].startswith("not run")
    assert block["paper"] == 0.82


def test_the_clinical_rows_closure_is_the_yardstick_of_what_the_record_could_add():
    """The rows that read the record directly get the same closure under `reference`; a clinical
    score as good as the real follow-up closes all of it, one that did not run is left out."""
    y, base, follow, rng = _data()
    halfway = 1.0 * y + rng.normal(size=N)
    block = _block(y, base, follow, follow, brock=Row(follow[None]), ehr_logistic=Row(halfway[None]),
                   baseline_plus_ehr=Row(status="not run: the validation split lacks one class"))
    assert list(block["reference"]) == ["brock", "ehr_logistic"]
    assert block["reference"]["brock"]["point"] == 1.0
    mid = block["reference"]["ehr_logistic"]
    assert 0.0 < mid["point"] < 1.0 and mid["ci95"][0] < mid["point"] < mid["ci95"][1]
