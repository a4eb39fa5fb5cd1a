"""Noise schedules: the authors' CompVis betas, the DDIM timesteps of their sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from namd.config import DiffusionConfig, SamplingConfig, load_config
from namd.models.schedules import (
    as_epsilon,
    load_scheduler_config,
    sampling_scheduler,
    save_scheduler,
    training_scheduler,
    training_target,
    unet_input,
)


def test_scaled_linear_is_the_compvis_linear_schedule():
    sched = training_scheduler(DiffusionConfig())
    # ldm.modules.diffusionmodules.util.make_beta_schedule("linear", 1000, 8.5e-4, 1.2e-2)
    compvis = np.linspace(8.5e-4 ** 0.5, 1.2e-2 ** 0.5, 1000, dtype=np.float64) ** 2
    np.testing.assert_allclose(sched.betas.numpy(), compvis, rtol=1e-5)
    linear = training_scheduler(DiffusionConfig(beta_schedule="linear"))
    np.testing.assert_allclose(linear.betas.numpy(), np.linspace(8.5e-4, 1.2e-2, 1000), rtol=1e-5)
    assert sched.config.prediction_type == "v_prediction" and not sched.config.clip_sample
    paper = training_scheduler(DiffusionConfig(prediction_type="epsilon"))
    assert paper.config.prediction_type == "epsilon"


def test_ddim_uses_compvis_uniform_timesteps_in_the_paper_preset(tmp_path):
    save_scheduler(training_scheduler(DiffusionConfig()), tmp_path)
    paper = load_config("paper", overrides=["require_pretrained=false"]).sampling
    ddim = sampling_scheduler(load_scheduler_config(tmp_path), paper)
    # ldm ddim: make_ddim_timesteps("uniform", 50, 1000) = range(0, 1000, 20) + 1
    assert ddim.timesteps.tolist() == list(range(981, 0, -20))
    assert not ddim.config.set_alpha_to_one and not ddim.config.clip_sample
    assert float(ddim.final_alpha_cumprod) == pytest.approx(float(ddim.alphas_cumprod[0]))


def test_the_cpu_sampler_starts_from_pure_noise(tmp_path):
    """DDIM 5 with trailing timesteps starts at t = T - 1 (alpha_bar 0.005), not at 'leading' + 1's
    t = 801 (alpha_bar 0.037), where the starting noise would be read as signal."""
    save_scheduler(training_scheduler(DiffusionConfig()), tmp_path)
    ddim = sampling_scheduler(load_scheduler_config(tmp_path), SamplingConfig())
    assert ddim.timesteps.tolist() == [999, 799, 599, 399, 199]
    assert float(ddim.alphas_cumprod[999]) < 0.005 < 0.03 < float(ddim.alphas_cumprod[801])


def test_dpmsolver_and_errors():
    schedule = dict(training_scheduler(DiffusionConfig()).config)
    dpm = sampling_scheduler(schedule, SamplingConfig(scheduler="dpmsolver++", steps=20))
    assert len(dpm.timesteps) == 20 and dpm.config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="DDIM only"):
        sampling_scheduler(schedule, SamplingConfig(scheduler="dpmsolver++", eta=0.5))
    with pytest.raises(ValueError, match="exceeds"):
        sampling_scheduler(schedule, SamplingConfig(steps=2000))
    with pytest.raises(ValueError, match="beta_end"):
        training_scheduler(DiffusionConfig(beta_start=0.1, beta_end=0.01))


def test_unet_input_puts_the_noisy_latent_first():
    noisy, base = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    x = unet_input(noisy, base)
    assert x.shape == (2, 8, 3, 3) and x[:, :4].sum() == 0 and x[:, 4:].sum() == 72
    assert unet_input(noisy, None) is noisy


def test_v_prediction_target_and_its_implied_noise(tmp_path):
    sched = training_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    noisy = sched.add_noise(z, noise, t)
    v = training_target(sched, z, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * z)
    torch.testing.assert_close(as_epsilon(v, noisy, t, sched.alphas_cumprod, "v_prediction"), noise,
                               atol=1e-5, rtol=1e-5)
    eps_sched = training_scheduler(DiffusionConfig(prediction_type="epsilon"))
    assert training_target(eps_sched, z, noise, t) is noise
    assert as_epsilon(noise, noisy, t, sched.alphas_cumprod, "epsilon") is noise
    save_scheduler(sched, tmp_path)  # the samplers read the parameterisation from the stage
    ddim = sampling_scheduler(load_scheduler_config(tmp_path), SamplingConfig(steps=10))
    assert ddim.config.prediction_type == "v_prediction"
