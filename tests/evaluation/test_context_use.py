"""The diagnosis of what C carries and how much the model uses it, on constructed data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from namd.config import SamplingConfig
from namd.evaluation import context_use as cu
from namd.inference.sampler import Conditioning


def test_derangement_moves_every_patient():
    for seed in range(20):
        perm = cu.derangement(7, seed)
        assert sorted(perm) == list(range(7)) and not (perm == np.arange(7)).any()
    with pytest.raises(ValueError, match="two patients"):
        cu.derangement(1, 0)


def test_cv_auroc_finds_signal_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 20)
    informative = np.column_stack([y + rng.normal(0, 0.3, 100), rng.normal(size=100)])
    assert cu.cv_auroc(informative, y) > 0.95
    assert abs(cu.cv_auroc(rng.normal(size=(100, 3)), y) - 0.5) < 0.2
    assert cu.cv_auroc(informative[:83], y[:83]) is None  # 3 malignant: fewer than the folds


def test_cv_auroc_takes_the_ehr_logistic_model_on_the_fields():
    """The record probe is the `ehr_logistic` row's model, missing values and codes included."""
    import pandas as pd

    from namd.cohort.ehr import EHR_FIELDS
    from namd.evaluation.baselines import ehr_model

    rng = np.random.default_rng(1)
    y = np.array([0] * 60 + [1] * 20)
    table = pd.DataFrame(np.nan, index=range(80), columns=list(EHR_FIELDS))
    table["age"] = 60 + 8 * y + rng.normal(0, 2, 80)
    table["gender"] = rng.choice([1.0, 2.0], 80)
    table.loc[::7, "age"] = np.nan  # missing values take the model's own imputation
    assert cu.cv_auroc(table, y, ehr_model(0)) > 0.9
    table["age"] = rng.normal(60, 2, 80)
    assert abs(cu.cv_auroc(table, y, ehr_model(0)) - 0.5) < 0.25


class ContextUNet(torch.nn.Module):
    """A stand-in U-Net: output = z + weight x mean of C (broadcast), as diffusers returns it."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, x, t, encoder_hidden_states):
        z = x[:, :4]
        return SimpleNamespace(sample=z + self.weight * encoder_hidden_states.mean((1, 2))[:, None, None, None])


def test_sensitivity_is_zero_for_a_model_that_ignores_c():
    baseline, context = torch.randn(6, 4, 2, 2), torch.randn(6, 3, 5)
    deaf = cu.sensitivity(ContextUNet(0.0), baseline, context)
    assert list(deaf) == ["0-100", "100-300", "300-600", "600-1000"] and set(deaf.values()) == {0.0}
    listening = cu.sensitivity(ContextUNet(5.0), baseline, context)
    assert all(v > 0.1 for v in listening.values())


class FakeSampler:
    """Samples = a per-key seeded draw + weight x mean C; decode = identity on channel 0."""

    def __init__(self, weight: float):
        self.weight = weight

    def generate(self, cond, cfg, show_progress=True):
        draws = [torch.randn(cfg.k, 1, 2, 2, generator=torch.Generator().manual_seed(int(k[1:])))
                 for k in cond.keys]
        shift = self.weight * cond.context.mean((1, 2))
        return torch.stack(draws) + shift[:, None, None, None, None]

    def decode(self, latents):
        return latents[:, 0].numpy()


def test_sample_shift_against_the_draw_to_draw_spread():
    cond = Conditioning([f"p{i}" for i in range(5)], None, torch.randn(5, 2, 3), torch.zeros(2, 3))
    cfg = SamplingConfig(k=7)  # the measure draws two per nodule whatever k is
    deaf = cu.sample_shift(FakeSampler(0.0), cond, cfg)
    assert deaf["swapped_vs_own_hu"] == 0.0 and deaf["draw_vs_draw_hu"] > 0
    loud = cu.sample_shift(FakeSampler(100.0), cond, cfg)
    assert loud["shift_over_spread"] > 5 and loud["draw_vs_draw_hu"] == pytest.approx(deaf["draw_vs_draw_hu"], rel=1e-5)
