"""K-sample generation: per-sample seeds, batch-size invariance, guidance, outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from namd.config import DiffusionConfig, SamplingConfig, UNetConfig
from namd.inference.sample_stage import grid_rows, index_frame, save_grid
from namd.inference.sampler import Conditioning, sample_latents, sample_seed
from namd.models.schedules import training_scheduler
from namd.models.unet import build_unet

SHAPE = (4, 4, 4)


@pytest.fixture(scope="module")
def unet():
    cfg = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=2)
    return build_unet(cfg, in_channels=8, out_channels=4, cross_attention_dim=6, sample_size=4, seed=0).eval()


@pytest.fixture(scope="module")
def schedule():
    return dict(training_scheduler(DiffusionConfig()).config)


def _cond(n: int = 3, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning([f"pair{i}" for i in range(n)], torch.randn(n, *SHAPE, generator=g),
                        torch.randn(n, 2, 6, generator=g), torch.zeros(2, 6))


def _sample(unet, schedule, cond, **kw):
    cfg = SamplingConfig(**{"k": 4, "steps": 3, **kw})
    return sample_latents(unet, schedule, cond, cfg, SHAPE, show_progress=False)


def test_seeds_depend_on_base_seed_nodule_and_replica():
    seeds = {sample_seed(23, f"p{i}", k) for i in range(10) for k in range(20)}
    assert len(seeds) == 200 and sample_seed(23, "p1", 3) == sample_seed(23, "p1", 3)
    assert sample_seed(23, "p1", 3) != sample_seed(24, "p1", 3)


@pytest.mark.parametrize("extra", [{}, {"eta": 0.7}, {"scheduler": "dpmsolver++"},
                                   {"guidance_scale": 3.0}])
def test_sample_k_of_nodule_i_does_not_depend_on_batching(unet, schedule, extra):
    cond = _cond()
    small = _sample(unet, schedule, cond, max_batch=3, **extra)
    large = _sample(unet, schedule, cond, max_batch=40, **extra)
    assert small.shape == (3, 4, *SHAPE) and torch.isfinite(small).all()
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-4)
    # nor on which other nodules are sampled alongside
    alone = _sample(unet, schedule, Conditioning(cond.keys[1:2], cond.baseline[1:2], cond.context[1:2],
                                                 cond.null), max_batch=40, **extra)
    torch.testing.assert_close(alone[0], large[1], rtol=1e-4, atol=1e-4)
    # while the K samples of a nodule differ from each other
    assert (large[:, 0] - large[:, 1]).abs().amax() > 1e-3


def test_conditioning_changes_samples_and_guidance_one_is_plain(unet, schedule):
    cond = _cond()
    base = _sample(unet, schedule, cond)
    other = _sample(unet, schedule, Conditioning(cond.keys, cond.baseline + 1, cond.context, cond.null))
    assert (base - other).abs().amax() > 1e-3
    # guidance g: eps = eps_null + g (eps_C - eps_null); g = 1 is the plain conditional model,
    # g = 0 is the null-context model
    null_cond = Conditioning(cond.keys, cond.baseline, cond.null.expand_as(cond.context), cond.null)
    torch.testing.assert_close(_sample(unet, schedule, cond, guidance_scale=0.0),
                               _sample(unet, schedule, null_cond), rtol=1e-4, atol=1e-4)


def test_eta_changes_ddim_samples(unet, schedule):
    cond = _cond()
    assert (_sample(unet, schedule, cond) - _sample(unet, schedule, cond, eta=1.0)).abs().amax() > 1e-3


def test_index_and_grids(tmp_path):
    pairs = pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "patient_id": ["1", "2", "3", "4"],
                          "split": "test", "label": pd.array([0, 1, 0, None], dtype="Int64"),
                          "baseline_index": [0, 2, 4, 6], "followup_index": [1, 3, 5, 7],
                          "age": 60.0})
    index = index_frame(pairs)
    assert list(index.columns) == ["pair_id", "patient_id", "split", "label", "baseline_index",
                                   "followup_index"]
    assert grid_rows(index, 2) == [0, 1] and grid_rows(index, 10) == [0, 1, 2, 3]
    samples = np.random.default_rng(0).normal(-500, 100, (5, 16, 16)).astype(np.float32)
    save_grid(tmp_path / "g.png", samples[0], None, samples, (-1000.0, 400.0), "test")
    assert (tmp_path / "g.png").stat().st_size > 1000
