"""What the baseline buys: the shuffled-baseline loss ratio on constructed models and data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from namd.config import DiffusionConfig
from namd.evaluation.baseline_use import BANDS, derangement, measure, summary_line, timestep_grid
from namd.models.schedules import training_scheduler

ABAR = training_scheduler(DiffusionConfig()).alphas_cumprod


def _oracle(abar):
    """A model that knows z2 = z1: eps = (z_t - sqrt(abar) z1) / sqrt(1 - abar)."""
    def eps(noisy, t, base, ctx):
        a = abar[t].float().view(-1, 1, 1, 1)
        return (noisy - a.sqrt() * base) / (1 - a).sqrt()
    return eps


def _blind(noisy, t, base, ctx):
    """A model that ignores the baseline (and the context)."""
    return 0.5 * noisy


def test_derangement_moves_every_pair():
    for n in (2, 3, 17):
        d = derangement(n, seed=n)
        assert sorted(d.tolist()) == list(range(n)) and (d != np.arange(n)).all()
    with pytest.raises(ValueError, match="two pairs"):
        derangement(1, 0)


def test_timestep_grid_covers_the_schedule_evenly():
    grid = timestep_grid(1000, 20)
    assert len(grid) == 20 and grid[0] == 25 and grid[-1] == 975
    assert set(np.diff(grid)) == {50}


def test_ratio_is_small_when_the_baseline_carries_the_follow_up_and_one_when_ignored():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(12, 4, 4, 4, generator=g)
    ctx, null = torch.zeros(12, 2, 3), torch.zeros(2, 3)
    used = measure(_oracle(ABAR), _blind, ABAR, z1, z1.clone(), ctx, null, n_timesteps=16)
    assert used["ratio"] < 1e-3 and used["loss_shuffled"] > 0.1
    assert used["ratio_to_prior"] < 1e-3 and used["x0_nearest_own_baseline"] == 1.0
    assert [b["t"] for b in used["bands"]] == [list(b) for b in BANDS]
    assert sum(b["n"] for b in used["bands"]) == 12 * 16
    ignored = measure(_blind, None, ABAR, z1, z1.clone(), ctx, null, n_timesteps=16)
    assert ignored["ratio"] == pytest.approx(1.0) and "ratio_to_prior" not in ignored
    assert all(b["ratio"] == pytest.approx(1.0) for b in ignored["bands"])
    assert "0.00" in summary_line(used) and "100%" in summary_line(used)


def test_same_seed_same_draws_so_two_models_are_compared_on_equal_inputs():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 4, 2, 2, generator=g), torch.randn(5, 4, 2, 2, generator=g)
    ctx, null = torch.zeros(5, 1, 2), torch.zeros(1, 2)
    a = measure(_blind, None, ABAR, z1, z2, ctx, null, n_timesteps=4, seed=3)
    b = measure(_blind, None, ABAR, z1, z2, ctx, null, n_timesteps=4, seed=3)
    c = measure(_blind, None, ABAR, z1, z2, ctx, null, n_timesteps=4, seed=4)
    assert a["loss_true"] == b["loss_true"] != c["loss_true"]
    with pytest.raises(ValueError, match="contexts"):
        measure(_blind, None, ABAR, z1, z2, ctx[:3], null)
