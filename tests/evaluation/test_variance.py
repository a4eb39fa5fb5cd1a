"""Variance statistics over the K virtual follow-ups (paper 4.3, Appendix D)."""

from __future__ import annotations

import numpy as np
import pytest

from namd.evaluation import variance


def test_per_nodule_mean_variance_error_and_groups():
    probs = np.array([[0.1, 0.1, 0.1, 0.1],   # benign, confident and right
                      [0.9, 0.9, 0.9, 0.9],   # benign, confident and wrong
                      [0.8, 0.9, 0.8, 0.9],   # malignant, right, small spread
                      [0.1, 0.9, 0.2, 0.8]])  # malignant, large spread: unsure
    table = variance.per_nodule(probs, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(table["mean_prob"], [0.1, 0.9, 0.85, 0.5])
    np.testing.assert_allclose(table["variance"], probs.var(axis=1))
    assert table["variance"][3] == pytest.approx(np.mean((probs[3] - 0.5) ** 2))
    np.testing.assert_allclose(table["error"], [0.1, 0.9, 0.15, 0.5])
    assert list(table["group"]) == ["confidently correct", "confidently incorrect",
                                    "confidently correct", "unsure"]


def test_single_run_has_zero_variance_and_nobody_unsure():
    table = variance.per_nodule(np.array([[0.2], [0.7]]), np.array([0, 0]))
    assert (table["variance"] == 0).all()
    assert list(table["group"]) == ["confidently correct", "confidently incorrect"]
    with pytest.raises(ValueError, match="\\(N, K\\)"):
        variance.per_nodule(np.zeros((3, 2)), np.array([0, 1]))


def test_running_variance_equals_variance_of_prefixes():
    rng = np.random.default_rng(0)
    probs = rng.random((5, 12))
    run = variance.running_variance(probs)
    for k in range(1, 13):
        np.testing.assert_allclose(run[:, k - 1], probs[:, :k].var(axis=1), atol=1e-12)
    assert (run[:, 0] == 0).all()


def test_running_variance_settles_and_stable_k_finds_it():
    rng = np.random.default_rng(1)
    probs = np.clip(0.5 + 0.2 * rng.normal(size=(200, 60)), 0, 1)
    curve = variance.running_variance(probs).mean(axis=0)
    # population variance of k draws has expectation (k-1)/k sigma^2: it rises, then plateaus
    assert curve[1] < curve[9] < curve[-1] * 1.05
    assert curve[-1] == pytest.approx(probs.var(axis=1).mean())
    k = variance.stable_k(curve)
    assert 5 < k < 60
    assert np.all(np.abs(curve[k - 1:] - curve[-1]) <= 0.05 * curve[-1])
    assert np.abs(curve[k - 2] - curve[-1]) > 0.05 * curve[-1]
    assert variance.stable_k(np.ones(7)) == 1


def test_variance_summary_by_label_and_error_relation():
    rng = np.random.default_rng(2)
    y = np.array([0] * 40 + [1] * 20)
    # benign: confident (small spread), malignant: unsure (large spread) as the paper observes
    centre = np.where(y == 1, 0.55, 0.15)[:, None]
    spread = np.where(y == 1, 0.25, 0.03)[:, None]
    probs = np.clip(centre + spread * rng.normal(size=(60, 20)), 0, 1)
    out = variance.variance_summary(probs, y)
    benign, malignant = out["per_label"]["0"]["variance"], out["per_label"]["1"]["variance"]
    assert benign["n"] == 40 and malignant["n"] == 20
    assert malignant["median"] > 10 * benign["median"]
    assert out["k"] == 20 and len(out["running_variance_vs_k"]) == 20
    assert out["running_variance_vs_k"][0]["mean"] == 0.0
    groups = out["error_vs_variance"]["groups"]
    assert sum(g["n"] for g in groups.values()) == 60
    assert groups["unsure"]["malignant"] >= 14  # the high-variance quarter is mostly malignant
    assert out["error_vs_variance"]["spearman_rho"] > 0.3
