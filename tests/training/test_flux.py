"""The Flux row: rectified-flow training (the target's sign, the loss falls, a handful of pairs
is learnt), its Euler sampler (per-seed, batch-independent samples) and the stage end to end on
a tiny run (files, the sampler's loading, refusals), and the T5 / CLIP text path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import SIZE, save_tiny_clip, write_tiny_cohort

from namd.cohort.ehr import EHR
from namd.cohort.store import Cohort
from namd.config import (
    ConfigError,
    SamplingConfig,
    TrainConfig,
    load_config,
    methods,
    save_config,
    validated_update,
)
from namd.config.flux import FluxConfig, FluxTransformerConfig
from namd.inference.flux_sampler import FluxConditioning, FluxSampler, integrate
from namd.models.flux import FluxText, build_transformer, flow_scheduler, pack, unpack
from namd.models.vae import build_vae, save_trained_vae
from namd.run.layout import RunDir
from namd.training.flux import FluxTask, check_inputs, run_stage
from namd.training.trainer import Trainer

TINY = FluxTransformerConfig(num_layers=1, num_single_layers=1, num_attention_heads=2,
                             attention_head_dim=8, axes_dims_rope=(2, 2, 4))
SHAPE, DIM, LENGTH = (4, 4, 4), 6, 3


class FakeText:
    """A frozen text path: token states and pooled vector from the nodule's diameter."""

    dim = pooled_dim = DIM
    length = LENGTH

    def encode(self, ehrs):
        d = torch.tensor([(e.SCT_LONG_DIA or 0.0) / 10.0 for e in ehrs])
        pooled = d[:, None] * torch.linspace(-1, 1, DIM)
        return pooled[:, None].expand(-1, LENGTH, -1).clone(), pooled


class Pairs:
    """In-memory pair latents and text states as a BatchSource (one rotation slot)."""

    def __init__(self, z1, z2, ehrs):
        self.z1, self.z2 = z1, z2
        self.tokens, self.pooled = FakeText().encode(ehrs)

    def __len__(self):
        return len(self.z1)

    def batch(self, idx):
        return {"z1": self.z1[idx][:, None], "z2": self.z2[idx][:, None],
                "tokens": self.tokens[idx], "pooled": self.pooled[idx]}


def _pairs(n: int, seed: int = 0) -> Pairs:
    """Follow-up = a fixed map of the baseline (sign flipped, shifted) plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, *SHAPE, generator=g)
    z2 = -0.8 * z1 + 0.5 + 0.05 * torch.randn(n, *SHAPE, generator=g)
    return Pairs(z1, z2, [EHR(SCT_LONG_DIA=4.0 + i) for i in range(n)])


def _task(seed: int = 0) -> FluxTask:
    model = build_transformer(TINY, latent_channels=SHAPE[0], joint_dim=DIM, pooled_dim=DIM, seed=seed)
    return FluxTask(model, FluxConfig(), rotate=False)


def _sampler(model) -> FluxSampler:
    schedule = dict(flow_scheduler(1.0).config)
    return FluxSampler(model.eval(), None, 1.0, FakeText(), schedule, SHAPE, (-1000.0, 400.0))


def _cond(data: Pairs, rows=None) -> FluxConditioning:
    rows = list(range(len(data))) if rows is None else rows
    return FluxConditioning([f"pair{i}" for i in rows], data.z1[rows], data.tokens[rows], data.pooled[rows])


class Oracle(torch.nn.Module):
    """A perfect velocity for data whose x_0 is the baseline: v = (x_s - x_0) / s."""

    class config:  # noqa: N801 - read as model.config.guidance_embeds
        guidance_embeds = False

    def forward(self, hidden_states, timestep, **_):
        n = hidden_states.shape[-1] // 2
        x, x0 = (unpack(hidden_states[..., :n], 4, 4), unpack(hidden_states[..., n:], 4, 4))
        return (pack((x - x0) / timestep[:, None, None, None]),)


def test_a_perfect_velocity_integrates_noise_exactly_to_x0():
    """The target noise - x_0 and Euler from s = 1 to 0 agree in sign and packing: the oracle's
    samples land on x_0 from any noise, in 8 steps or 2; its training loss is 0."""
    data = _pairs(3)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    for steps in (2, 8):
        out = integrate(Oracle(), dict(flow_scheduler(1.0).config), steps, noise, data.z1,
                        data.tokens, data.pooled)
        torch.testing.assert_close(out, data.z1, rtol=1e-5, atol=1e-5)
    task = _task()
    task.model = Oracle()
    same = Pairs(data.z1, data.z1, [EHR()] * 3)
    loss, _ = task.loss(same.batch(np.arange(3)), torch.Generator().manual_seed(0), True)
    assert float(loss) < 1e-8


def test_timesteps_are_logit_normal_on_the_shifted_schedule():
    task = _task()
    s = task.sigmas(20000, torch.Generator().manual_seed(0))
    assert 0 < float(s.min()) and float(s.max()) <= 1 and abs(float(s.mean()) - 0.5) < 0.01
    logit = torch.logit(s.double())
    assert abs(float(logit.std()) - 1.0) < 0.03  # N(0, 1) before the sigmoid
    again = task.sigmas(20000, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)  # drawn from the step's generator: a resumed run replays it
    shifted = FluxTask(task.model, FluxConfig(shift=3.0), False).sigmas(20000, torch.Generator().manual_seed(0))
    assert float(shifted.mean()) > 0.6  # shift > 1 puts training at higher noise


def _fit(task: FluxTask, data: Pairs, out, steps: int, lr: float = 3e-3) -> list[float]:
    cfg = TrainConfig(lr=lr, batch_size=len(data) if len(data) < 8 else 8, max_steps=steps,
                      schedule="constant", val_every=10_000, checkpoint_every=10_000)
    Trainer(cfg, out).fit(task, data)
    lines = (out / "log.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [float(row.split(",")[head.index("loss")]) for row in lines[1:]]


def test_training_loss_falls(tmp_path):
    losses = _fit(_task(), _pairs(16), tmp_path, 80)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_a_handful_of_pairs_is_learnt(tmp_path):
    """After overfitting four pairs, the follow-ups drawn from noise approach the real ones:
    far nearer than the baseline copy's and than the untrained model's samples."""
    data, task = _pairs(4), _task()
    cfg = SamplingConfig(k=4, seed=5, steps=8)
    before = _sampler(task.model).generate(_cond(data), cfg, show_progress=False)
    _fit(task, data, tmp_path, 300)
    after = _sampler(task.model).generate(_cond(data), cfg, show_progress=False)
    real = data.z2[:, None]
    err, err_before = float((after - real).pow(2).mean()), float((before - real).pow(2).mean())
    copy = float((data.z1 - data.z2).pow(2).mean())
    assert err < 0.15 * copy and err < 0.15 * err_before, (err, copy, err_before)


def test_samples_are_reproducible_per_seed_and_independent_of_the_batch():
    data, model = _pairs(3), _task(seed=4).model
    sampler = _sampler(model)
    cfg = SamplingConfig(k=4, seed=23, steps=3)
    one = sampler.generate(_cond(data), validated_update(cfg, {"max_batch": 1}), show_progress=False)
    many = sampler.generate(_cond(data), validated_update(cfg, {"max_batch": 64}), show_progress=False)
    assert one.shape == (3, 4, *SHAPE) and torch.isfinite(one).all()
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-4)
    alone = sampler.generate(_cond(data, [1]), cfg, show_progress=False)  # nor on its neighbours
    torch.testing.assert_close(alone[0], many[1], rtol=1e-4, atol=1e-4)
    assert (many[:, 0] - many[:, 1]).abs().amax() > 1e-3  # the K samples differ
    other = sampler.generate(_cond(data), validated_update(cfg, {"seed": 24}), show_progress=False)
    assert (other - many).abs().amax() > 1e-3


# -- the stage on a tiny run ----------------------------------------------------------------------
OVERRIDES = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.block_out_channels=[8,8,8]",
             "vae.norm_num_groups=4", "vae.pretrained=null", "diffusion.unet.pretrained=null",
             "flux.train.max_steps=2", "flux.train.batch_size=4", "flux.transformer.num_layers=1",
             "flux.transformer.num_single_layers=1", "flux.transformer.attention_head_dim=8",
             "flux.transformer.axes_dims_rope=[2,2,4]", "flux.text_length=40", "sampling.k=2",
             "flux.sampling_steps=2"]


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    """A tiny run (cohort, untrained plain VAE) and its trained Flux stage."""
    run = RunDir(tmp_path_factory.mktemp("flux") / "run")
    write_tiny_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=OVERRIDES)
    save_config(config, run.path / "config.yaml")
    torch.manual_seed(0)
    save_trained_vae(build_vae(config.vae), run.stage("vae_no_align"), scale_factor=0.7)
    run.mark_done("vae_no_align", validated_update(config, {"vae.align": False}), 0)
    run_stage(config, run)
    return run, config


def test_stage_writes_its_files_and_the_sampler_reads_them(flux_run):
    run, config = flux_run
    out = run.stage("cond_flux")
    info = json.loads((out / "run_info.json").read_text())
    assert info["complete"] and info["latent_shape"] == [4, 4, 4] and info["steps"] == 2
    assert info["vae_dir"] == "vae_no_align" and info["vae_fingerprint"] and info["pretrained"] is None
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["shift"] == 1.0
    assert json.loads((out / "text_encoder.json").read_text())["text_encoder"] == "shared"
    sampler = FluxSampler.from_run(run, {"vae": "vae_no_align", "cond": "cond_flux"}, config)
    assert methods.sampler_steps(config, methods.get("flux")) == 2
    cohort = Cohort(run.stage("cohort"))
    pairs = cohort.pairs("test")
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(r) for _, r in pairs.iterrows()])
    latents = sampler.generate(cond, config.sampling, show_progress=False)
    assert latents.shape == (2, 2, *sampler.latent_shape) and cond.tokens.shape == (2, 40, 384)
    crops = sampler.decode(latents[:, 0])
    assert crops.shape == (2, SIZE, SIZE) and np.isfinite(crops).all()
    with pytest.raises(FileExistsError, match="already trained"):
        run_stage(config, run)


def test_the_sampler_refuses_a_vae_changed_since_training(flux_run, tmp_path):
    run, config = flux_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    torch.manual_seed(1)
    save_trained_vae(build_vae(config.vae), copy.stage("vae_no_align"), scale_factor=0.7)
    copy.mark_done("vae_no_align", validated_update(config, {"vae.align": False}), 0)
    with pytest.raises(ValueError, match="changed after"):
        FluxSampler.from_run(copy, {"vae": "vae_no_align", "cond": "cond_flux"}, config)


def test_missing_weights_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="flux.pretrained is unset and require_pretrained"):
        check_inputs(load_config("paper"))
    scratch = load_config("paper", overrides=["require_pretrained=false"])
    with pytest.raises(ConfigError, match="flux.t5 is unset"):
        check_inputs(scratch)
    with pytest.raises(ConfigError, match="not found"):
        check_inputs(validated_update(scratch, {"flux.t5": str(tmp_path / "no"), "flux.clip": str(tmp_path)}))


def test_t5_and_clip_text_path(tmp_path, monkeypatch):
    """t5_clip: T5's token states padded to text_length (no mask) and CLIP's pooled vector, from
    local folders laid out as FLUX.1's (text_encoder_2/ + tokenizer_2/, text_encoder/ + tokenizer/);
    short sentences, as the tiny CLIP tokenizer spells words letter by letter."""
    from transformers import T5Config, T5EncoderModel

    import namd.models.token_text as token_text
    from namd.models.minilm import minilm_dir

    def short(ehr):
        return "abc" if ehr.SCT_LONG_DIA < 7 else "bad cab"

    monkeypatch.setattr(token_text, "report_sentence", short)  # both encoders read it there

    folder = save_tiny_clip(tmp_path / "flux", hidden=16)
    shutil.copytree(minilm_dir(), folder / "tokenizer_2",
                    ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=31000, d_model=12, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
                   ).save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    text = FluxText.from_spec({"text_encoder": "t5_clip", "text": load_config("tiny").text.model_dump(),
                               "length": 90, "t5": str(folder), "clip": str(folder)})
    ehrs = [EHR(SCT_LONG_DIA=5.0, age=61.0), EHR(SCT_LONG_DIA=9.0, age=70.0)]
    tokens, pooled = text.encode(ehrs)
    assert tokens.shape == (2, 90, 12) and pooled.shape == (2, 16) and (text.dim, text.pooled_dim) == (12, 16)
    assert (tokens[0] - tokens[1]).abs().amax() > 0 and torch.equal(text.encode(ehrs[:1])[0], tokens[:1])
