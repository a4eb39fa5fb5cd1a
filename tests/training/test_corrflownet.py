"""CorrFlowNet-style stages (namd.training.corrflownet_ae, namd.training.corrflownet) and their
sampler (namd.inference.corrflownet_sampler): the autoencoder's loss and correlation term, the
flow overfitting a handful of pairs, the integrator, the ODE's determinism, the SDE's per-seed
and batch-independent draws, and the stages end to end on a tiny run."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from namd.config import SamplingConfig, TrainConfig, load_config, methods, save_config
from namd.config.corrflownet import CorrAutoencoderConfig, CorrFlowConfig, CorrFlowNetConfig
from namd.config.methods import CORRFLOWNET_AE_FILES, CORRFLOWNET_FILES
from namd.inference.corrflownet_sampler import CorrFlowNetSampler
from namd.models.corrflownet import (
    build_autoencoder,
    build_flow,
    integrate,
    pearson_per_dim,
    velocity,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.training.corrflownet import FlowTask, LatentPairs
from namd.training.corrflownet_ae import AutoencoderTask
from namd.training.trainer import Trainer

AE = CorrAutoencoderConfig(channels=(8, 8), norm_groups=4, head_width=8)
FLOW = CorrFlowConfig(block_out_channels=(8, 16), norm_num_groups=4)
SHAPE = (4, 4, 4)
DIRS = {"autoencoder": "autoencoder_corrflownet", "cond": "cond_corrflownet"}


def _train(steps: int, lr: float, batch: int = 4) -> TrainConfig:
    return TrainConfig(lr=lr, batch_size=batch, max_steps=steps, val_every=10_000, checkpoint_every=10_000,
                       rotation_augment=False)


def _log(out, key: str) -> list[float]:
    with (out / "log.csv").open() as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r["phase"] == "train"]


class CropData:
    """In-memory pairs of 8 x 8 crops in [-1, 1]: a disc of random radius and centre, baseline
    and follow-up drawn independently (so only the correlation term correlates their latents)."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")

        def discs() -> torch.Tensor:
            r, cy, cx = 1 + 2 * torch.rand(3, n, 1, 1, generator=g) * torch.tensor([1.0, 1.5, 1.5])[:, None, None, None]
            inside = (yy - 2 - cy) ** 2 + (xx - 2 - cx) ** 2 <= r ** 2
            return torch.where(inside, 0.5, -0.8)[:, None]

        self.xb, self.xf = discs(), discs()
        self.labels = torch.tensor([float(i % 2) for i in range(n)])

    def __len__(self):
        return len(self.xb)

    def batch(self, idx):
        return {"xb": self.xb[idx], "xf": self.xf[idx], "label": self.labels[idx]}


def _latent_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zb = torch.randn(n, *SHAPE, generator=g)
    return zb, zb + torch.randn(n, *SHAPE, generator=g)


def _flow_task(steps: int = 1, conditioned: bool = True) -> FlowTask:
    cfg = CorrFlowNetConfig(flow=FLOW, train=_train(steps, 5e-3), condition_on_baseline=conditioned)
    return FlowTask(build_flow(FLOW, latent_channels=4, sample_size=4, conditioned=conditioned, seed=0), cfg)


def _sampler(task: FlowTask, sde_scale: float = 0.0) -> CorrFlowNetSampler:
    spec = {"latent_scale": 1.0, "condition_on_baseline": task.cfg.condition_on_baseline,
            "latent_shape": list(SHAPE)}
    return CorrFlowNetSampler(build_autoencoder(AE, 0).eval(), task.net.eval(), spec, (-1000.0, 400.0), sde_scale)


def _cond(zb: torch.Tensor, keys=None):
    from namd.inference.corrflownet_sampler import FlowConditioning

    return FlowConditioning(keys or [f"pair{i}" for i in range(len(zb))], zb)


# -- the autoencoder ------------------------------------------------------------------------------
def test_autoencoder_loss_falls_and_the_correlation_term_raises_the_latent_correlation(tmp_path):
    data = CropData(8)

    def fit(weight: float, out):
        ae = build_autoencoder(AE.model_copy(update={"corr_weight": weight}), 0)
        Trainer(_train(40, 3e-3, batch=8), out).fit(AutoencoderTask(ae, False), data)
        with torch.no_grad():
            return float(pearson_per_dim(ae.encode(data.xb)[0], ae.encode(data.xf)[0]))

    without, with_term = fit(0.0, tmp_path / "a"), fit(1.0, tmp_path / "b")
    recon = _log(tmp_path / "a", "recon")
    assert np.mean(recon[-5:]) < 0.7 * np.mean(recon[:5])
    assert with_term > without + 0.2 and with_term > 0.5
    bce = _log(tmp_path / "b", "bce")
    assert np.isfinite(bce).all()


def test_pearson_is_scale_free_and_centred():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 3, 2, 2, generator=g)
    assert float(pearson_per_dim(a, 5.0 * a + 3.0)) == pytest.approx(1.0, abs=1e-4)
    assert float(pearson_per_dim(a, -a)) == pytest.approx(-1.0, abs=1e-4)


# -- the flow ------------------------------------------------------------------------------------
def test_a_perfect_velocity_integrates_the_baseline_exactly_to_the_followup():
    zb, zf = _latent_pairs(3)
    for steps in (1, 4, 7):
        torch.testing.assert_close(integrate(lambda z, t: zf - zb, zb, steps), zf, rtol=1e-5, atol=1e-5)
    # the SDE's diffusion vanishes with its scale and adds no noise in the last step
    torch.testing.assert_close(integrate(lambda z, t: zf - zb, zb, 1, 1.0, lambda: torch.ones_like(zb)), zf)


@pytest.mark.parametrize("conditioned", [True, False])
def test_the_flow_loss_falls_and_overfits_a_handful_of_pairs(tmp_path, conditioned):
    zb, zf = _latent_pairs(4, seed=3)
    task = _flow_task(80, conditioned)
    data = LatentPairs(zb[:, None], zf[:, None])
    Trainer(task.cfg.train, tmp_path).fit(task, data)
    mse = _log(tmp_path, "mse")
    assert np.mean(mse[-10:]) < 0.2 * np.mean(mse[:10])
    end = _sampler(task).generate(_cond(zb), SamplingConfig(k=1, steps=8), show_progress=False)[:, 0]
    assert (end - zf).pow(2).mean() < 0.25 * (zb - zf).pow(2).mean()


# -- sampling ------------------------------------------------------------------------------------
def test_the_ode_is_deterministic_over_seeds_and_k():
    zb, _ = _latent_pairs(3)
    sampler = _sampler(_flow_task())
    a = sampler.generate(_cond(zb), SamplingConfig(k=3, seed=1, steps=3), show_progress=False)
    b = sampler.generate(_cond(zb), SamplingConfig(k=3, seed=2, steps=3), show_progress=False)
    assert torch.equal(a, b) and torch.equal(a[:, 0], a[:, 2])
    assert not sampler.stochastic and sampler.info()["deterministic"] is True


def test_the_sde_is_per_seed_batch_independent_and_differs_over_k():
    zb, _ = _latent_pairs(3)
    sampler = _sampler(_flow_task(conditioned=False), sde_scale=0.5)
    cond = _cond(zb)
    small = sampler.generate(cond, SamplingConfig(k=3, max_batch=2, steps=4), show_progress=False)
    large = sampler.generate(cond, SamplingConfig(k=3, max_batch=64, steps=4), show_progress=False)
    again = sampler.generate(cond, SamplingConfig(k=3, max_batch=64, steps=4), show_progress=False)
    assert small.shape == (3, 3, *SHAPE) and torch.equal(large, again)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-4)
    alone = sampler.generate(_cond(zb[1:2], ["pair1"]), SamplingConfig(k=3, steps=4), show_progress=False)
    torch.testing.assert_close(alone[0], large[1], rtol=1e-4, atol=1e-4)
    assert (large[:, 0] - large[:, 1]).abs().amax() > 1e-2
    other = sampler.generate(cond, SamplingConfig(k=3, seed=24, steps=4), show_progress=False)
    assert (other - large).abs().amax() > 1e-2
    assert sampler.info()["sde_scale"] == 0.5


# -- the stages end to end ------------------------------------------------------------------------
TINY = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.pretrained=null", "diffusion.unet.pretrained=null",
        "corrflownet.autoencoder.channels=[8,8]", "corrflownet.autoencoder.norm_groups=4",
        "corrflownet.autoencoder.head_width=8", "corrflownet.autoencoder.train.max_steps=2",
        "corrflownet.autoencoder.train.batch_size=4", "corrflownet.autoencoder.train.val_every=1",
        "corrflownet.flow.block_out_channels=[8,16]", "corrflownet.flow.norm_num_groups=4",
        "corrflownet.train.max_steps=2", "corrflownet.train.batch_size=4", "corrflownet.train.val_every=1",
        "corrflownet.sampling_steps=2", "sampling.k=2"]


@pytest.fixture(scope="module")
def corr_run(tmp_path_factory):
    """A tiny run with both CorrFlowNet-style stages trained (two steps each)."""
    from helpers import write_tiny_cohort

    from namd.training import corrflownet, corrflownet_ae

    run = RunDir(tmp_path_factory.mktemp("corrflownet") / "run")
    write_tiny_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=TINY)
    save_config(config, run.path / "config.yaml")
    corrflownet_ae.run_stage(config, run)
    corrflownet.run_stage(config, run)
    return run, config


def test_stages_write_their_files_and_both_samplers_load_them(corr_run):
    run, config = corr_run
    for folder, files in ((DIRS["autoencoder"], CORRFLOWNET_AE_FILES), (DIRS["cond"], CORRFLOWNET_FILES)):
        assert run.is_done(folder)
        for name in files:
            assert (run.stage(folder) / name).is_file(), name
    info = json.loads((run.stage(DIRS["autoencoder"]) / "run_info.json").read_text())
    assert np.isfinite(info["report"]["recon_l1"]) and info["latent_shape"] == [4, 8, 8]
    baselines = np.stack([np.full((16, 16), -800.0, np.float32)] * 3)
    for name, stochastic in (("corrflownet_ode", False), ("corrflownet_sde", True)):
        method = methods.get(name)
        sampler = method.load_sampler(run, config)
        assert sampler.stochastic is stochastic and method.stochastic is stochastic
        cfg = methods.sampling_of(config, method)
        cond = sampler.conditioning(["a", "b", "c"], baselines, [None] * 3)
        latents = sampler.generate(cond, cfg, show_progress=False)
        assert latents.shape == (3, cfg.k, *sampler.latent_shape) and cfg.steps == 2
        crops = sampler.decode(latents.flatten(0, 1))
        assert crops.shape == (3 * cfg.k, 16, 16) and crops.dtype == np.float32
        assert np.isfinite(crops).all() and crops.min() >= -1000.0 and crops.max() <= 400.0


def test_missing_or_damaged_files_are_one_line_errors(corr_run, tmp_path):
    from helpers import flip_bit

    run, config = corr_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    flow, ae = copy.stage(DIRS["cond"]), copy.stage(DIRS["autoencoder"])
    (flow / "flow.json").rename(flow / "flow.json.bak")
    with pytest.raises(RunFileError, match="flow.json") as err:
        CorrFlowNetSampler.ode(copy, DIRS, config)
    assert "\n" not in str(err.value)
    (flow / "flow.json.bak").rename(flow / "flow.json")
    flip_bit(ae / "autoencoder.safetensors")
    with pytest.raises(RunFileError, match="autoencoder.safetensors"):
        CorrFlowNetSampler.sde(copy, DIRS, config)
    shutil.copy(run.stage(DIRS["autoencoder"]) / "autoencoder.safetensors", ae / "autoencoder.safetensors")
    (ae / "autoencoder.json").write_text(json.dumps({"autoencoder": {"channels": "wide"}}))
    with pytest.raises(RunFileError, match="autoencoder.json"):
        CorrFlowNetSampler.ode(copy, DIRS, config)
    shutil.copy(run.stage(DIRS["autoencoder"]) / "autoencoder.json", ae / "autoencoder.json")
    info_path = flow / "run_info.json"
    info = json.loads(info_path.read_text())
    json.dump({**info, "autoencoder_sha256": "0" * 64}, info_path.open("w"))
    with pytest.raises(ValueError, match="changed after"):
        CorrFlowNetSampler.ode(copy, DIRS, config)
    json.dump({**info, "complete": False}, info_path.open("w"))
    with pytest.raises(RunFileError, match="run_info.json"):
        CorrFlowNetSampler.ode(copy, DIRS, config)
    from namd.training import corrflownet

    with pytest.raises(FileExistsError):  # a finished stage is not retrained without a flag
        corrflownet.run_stage(config, run)


def test_the_paper_preset_loads_and_sizing_works_on_meta_tensors():
    from namd.models.corrflownet import (
        ae_sizing_parts,
        ae_train_config,
        sizing_parts,
        stage_train_config,
    )

    config = load_config("paper")
    assert stage_train_config(config) is config.corrflownet.train
    assert ae_train_config(config) is config.corrflownet.autoencoder.train
    for parts in (sizing_parts, ae_sizing_parts):
        trainable, frozen, loss, note = parts(config, 2)
        assert trainable and not frozen and note
        value = loss()
        assert value.device.type == "meta" and value.shape == ()
    # the sampling-only fields do not make the trained flow disagree
    assert set(methods.get("corrflownet_ode").stage("cond").ignores) == {"corrflownet.sampling_steps",
                                                                         "corrflownet.sde_scale"}


def test_velocity_takes_the_baseline_as_a_concatenated_condition():
    net = build_flow(FLOW, latent_channels=4, sample_size=4, conditioned=True, seed=0)
    assert net.config.in_channels == 8
    z = torch.zeros(2, *SHAPE)
    out = velocity(net, z, torch.zeros(2), torch.randn(2, *SHAPE))
    assert out.shape == z.shape
