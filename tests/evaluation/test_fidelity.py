"""Fidelity of the mean of K against the VAE-copy ceiling, on constructed crops."""

from __future__ import annotations

import numpy as np
import pytest

from namd.evaluation.fidelity import fidelity, mae_matrix, nearest_own_share

WINDOW = (-1000.0, 400.0)


def _crops(n=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-900, 100, (n, size, size)).astype(np.float32)


def test_nearest_share_counts_rows_whose_own_column_is_strictly_smallest():
    d = np.array([[0.0, 1.0, 2.0], [1.0, 0.5, 0.2], [3.0, 3.0, 3.0]])
    assert nearest_own_share(d) == pytest.approx(1 / 3)  # row 1 is nearer 2, row 2 ties


def test_mae_matrix_clips_to_the_window_first():
    a = np.full((1, 2, 2), 5000.0)
    b = np.stack([np.full((2, 2), 400.0), np.full((2, 2), 300.0)])
    assert mae_matrix(a, b, WINDOW).tolist() == [[0.0, 100.0]]


def test_samples_around_their_own_follow_up_pass_and_collapsed_copies_show_no_spread():
    real = _crops()
    rng = np.random.default_rng(1)
    samples = real[:, None] + rng.normal(0, 40, (6, 5, 8, 8)).astype(np.float32)
    copy = real + 60.0
    block = fidelity(samples, real, copy, WINDOW)
    assert block["nearest_own_followup_share"] == 1.0
    assert block["mean_of_k_mae_hu"] < block["per_sample_mae_hu"]  # averaging K removes noise
    assert block["mean_of_k_mae_to_vae_copy"] < 0.5 and block["spread_over_k_hu"] > 20
    collapsed = fidelity(np.repeat(copy[:, None], 5, 1), real, copy, WINDOW)
    assert collapsed["spread_over_k_hu"] < 1e-3
    assert collapsed["mean_of_k_mae_to_vae_copy"] == pytest.approx(1.0)
    shuffled = fidelity(samples[::-1].copy(), real, copy, WINDOW)
    assert shuffled["nearest_own_followup_share"] == 0.0  # n = 6: no row is its own reversed
    with pytest.raises(ValueError, match="do not match"):
        fidelity(samples[:3], real, copy, WINDOW)
