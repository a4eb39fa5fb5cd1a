"""AUROC / AUPRC against hand-computed values, the bootstrap, and the DeLong test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from namd.evaluation import metrics


def test_auroc_and_auprc_match_hand_computed_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # 3 of the 4 (malignant, benign) pairs are ordered correctly
    assert metrics.auroc(y, s) == pytest.approx(0.75)
    # ranks: 0.8 (tp, precision 1), 0.4 (fp), 0.35 (tp, precision 2/3) -> AP = (1 + 2/3) / 2
    assert metrics.auprc(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.auroc(y, -s) == pytest.approx(0.25)
    assert metrics.auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie


def test_undefined_and_invalid_inputs():
    assert np.isnan(metrics.auroc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert np.isnan(metrics.auprc(np.array([0, 0]), np.array([0.2, 0.3])))
    with pytest.raises(ValueError, match="not finite"):
        metrics.auroc(np.array([0, 1]), np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match="0 \\(benign\\) or 1"):
        metrics.auroc(np.array([0, 2]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="equal-length"):
        metrics.auroc(np.array([0, 1, 1]), np.array([0.2, 0.3]))


def _data(n: int = 300, share: float = 0.2, shift: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < share).astype(int)
    return y, rng.normal(size=n) + shift * y, rng


def test_stratified_resamples_keep_class_counts():
    y, _, _ = _data(50)
    idx = metrics.stratified_resamples(y, 20, seed=1)
    assert idx.shape == (20, len(y)) and (y[idx].sum(axis=1) == y.sum()).all()
    assert len({tuple(row) for row in idx}) == 20  # distinct resamples


def test_batched_metrics_equal_scikit_learn_with_ties():
    rng = np.random.default_rng(4)
    y = (rng.random((30, 40)) < 0.3).astype(int)
    y[:, :2] = [1, 0]  # both classes in every row
    s = np.round(rng.normal(size=(30, 40)) + y, 1)  # many ties
    s[0] = 0.5  # a row that is one big tie
    for name, batched in metrics.BATCHED.items():
        expected = [metrics.METRICS[name](yy, ss) for yy, ss in zip(y, s, strict=True)]
        np.testing.assert_allclose(batched(y, s), expected, rtol=1e-12, err_msg=name)


def test_bootstrap_ci_covers_estimate_and_narrows_with_more_nodules():
    y, s, _ = _data(100)
    lo, hi = metrics.bootstrap_ci(y, s, "auroc", 400, 0.95, seed=3)
    assert lo < metrics.auroc(y, s) < hi
    y2, s2, _ = _data(1600)
    lo2, hi2 = metrics.bootstrap_ci(y2, s2, "auroc", 400, 0.95, seed=3)
    assert (hi2 - lo2) < 0.5 * (hi - lo)  # width ~ 1/sqrt(n): 4x the data, half the width
    assert metrics.bootstrap_ci(y, s, "auroc", 50, 0.95, seed=3) == \
        metrics.bootstrap_ci(y, s, "auroc", 50, 0.95, seed=3)


def _delong_brute_force(y, scores):
    """Placement values by explicit pair comparison (ties count one half), O(m n)."""
    out_auc, v10s, v01s = [], [], []
    for s in scores:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None]).astype(float) + 0.5 * (pos[:, None] == neg[None])
        out_auc.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = (y == 1).sum(), (y == 0).sum()
    return np.array(out_auc), np.cov(np.array(v10s)) / m + np.cov(np.array(v01s)) / n


def test_fast_delong_matches_brute_force_and_sklearn_with_ties():
    y, s1, rng = _data(120)
    s2 = np.round(s1 + rng.normal(size=len(y)), 1)  # rounding creates ties
    aucs, cov = metrics.delong_covariance(y, np.stack([s1, s2]))
    ref_aucs, ref_cov = _delong_brute_force(y, np.stack([s1, s2]))
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)
    assert aucs[1] == pytest.approx(roc_auc_score(y, s2))


def test_delong_variance_agrees_with_the_bootstrap():
    y, s, _ = _data(400)
    _, cov = metrics.delong_covariance(y, s[None])
    boot = metrics.bootstrap(y, s, "auroc", 1000, seed=5)
    assert 0.75 < cov[0, 0] / boot.var() < 1.33


def test_delong_test_detects_a_real_difference_and_not_a_null_one():
    y, s, rng = _data(300, shift=1.5)
    weak = s + rng.normal(scale=2.0, size=len(y))
    strong = metrics.delong_test(y, s, weak)
    assert strong["delta_auroc"] == pytest.approx(metrics.auroc(y, s) - metrics.auroc(y, weak))
    assert strong["p_value"] < 1e-3 and strong["test"] == "DeLong"
    same = metrics.delong_test(y, s, 2 * s + 1)  # same ranking
    assert same["p_value"] == 1.0 and same["delta_auroc"] == 0.0
    # two equally informative, independent noisy copies: a typical null p-value
    a, b = s + rng.normal(size=len(y)), s + rng.normal(size=len(y))
    assert metrics.delong_test(y, a, b)["p_value"] > 0.01
    with pytest.raises(ValueError, match="two nodules per class"):
        metrics.delong_test(np.array([0, 0, 0, 1]), np.arange(4.0), np.arange(4.0))


def test_paired_bootstrap_agrees_with_delong_on_a_clear_difference():
    y, s, rng = _data(300, shift=1.5)
    weak = s + rng.normal(scale=2.0, size=len(y))
    boot = metrics.paired_bootstrap_test(y, s, weak, "auroc", 300, seed=0)
    assert boot["delta"] == pytest.approx(metrics.auroc(y, s) - metrics.auroc(y, weak))
    assert boot["p_value"] < 0.01
    null = metrics.paired_bootstrap_test(y, s, s.copy(), "auprc", 100, seed=0)
    assert null["delta"] == 0.0 and null["p_value"] == 1.0


def test_score_block_reports_runs_and_the_mean_probability():
    y, s, rng = _data(200)
    runs = np.stack([s + rng.normal(scale=0.5, size=len(y)) for _ in range(5)])
    block = metrics.score_block(y, runs, n_boot=100, level=0.95, seed=0)
    per_run = [roc_auc_score(y, r) for r in runs]
    assert block["k"] == 5
    assert block["auroc"]["mean"] == pytest.approx(np.mean(per_run))
    assert block["auroc"]["std"] == pytest.approx(np.std(per_run)) and block["auroc"]["std"] > 0
    assert block["mean_prob_auroc"] == pytest.approx(roc_auc_score(y, runs.mean(0)))
    lo, hi = block["auroc"]["ci95"]
    assert lo < block["auroc"]["mean"] < hi  # the interval brackets the mean it is reported with
    mlo, mhi = block["mean_prob_ci95"]["auroc"]
    assert mlo < block["mean_prob_auroc"] < mhi
    single = metrics.score_block(y, s, n_boot=50, level=0.95, seed=0)
    assert single["k"] == 1 and single["auroc"]["std"] == 0.0 and "mean_prob_auroc" not in single
