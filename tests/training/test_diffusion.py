"""The prior and conditional diffusion stages: tasks, soft-prompt training, the run-directory
contract end to end (train prior -> train cond -> namd sample), and an overfitting check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import namd.models.context_factory as context_factory
from namd.cli.main import main
from namd.cohort.ehr import EHR
from namd.cohort.store import CohortWriter
from namd.config import (
    DiffusionConfig,
    SamplingConfig,
    TrainConfig,
    UNetConfig,
    load_config,
    save_config,
)
from namd.evaluation.baseline_use import measure
from namd.inference.sampler import Conditioning, sample_latents
from namd.models.context import ContextEncoder
from namd.models.schedules import as_epsilon, training_scheduler
from namd.models.unet import build_unet
from namd.models.vae import build_vae, save_trained_vae
from namd.run.layout import RunDir
from namd.training.diffusion import CondTask, PriorTask, pick_rotation, run_stage
from namd.training.trainer import Trainer

TINY_UNET = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=2)


class FakeEncoder(ContextEncoder):
    """Stand-in for the LLM encoder: C = diameter-scaled fixed directions + trainable prompts."""

    def __init__(self, cfg=None, dim: int = 6, m: int = 2):
        super().__init__()
        self.dim, self.n_tokens = dim, m
        self.prompts = torch.nn.Parameter(torch.zeros(m, dim))
        self.register_buffer("proj", torch.randn(m, dim, generator=torch.Generator().manual_seed(0)))

    def forward(self, ehrs):
        d = torch.tensor([[(e.SCT_LONG_DIA or 0.0) / 10.0] for e in ehrs])
        return d[:, :, None] * self.proj + self.prompts

    def cache_key(self, ehr):
        return repr(ehr)

    def empty_prompt_context(self):
        return self.prompts[None] + 0.5  # the empty sentence's C, through the trainable prompts


def _fake(null_mode: str = "zeros") -> FakeEncoder:
    encoder = FakeEncoder()
    encoder.null_mode = null_mode
    return encoder


class Pairs:
    """In-memory pair latents as a BatchSource (one rotation slot)."""

    def __init__(self, z1, z2, ehrs):
        self.z1, self.z2, self.ehrs = z1, z2, ehrs

    def __len__(self):
        return len(self.z1)

    def batch(self, idx):
        return {"z1": self.z1[idx][:, None], "z2": self.z2[idx][:, None], "ehr": [self.ehrs[i] for i in idx]}


def _unet(in_channels: int = 8, seed: int = 0):
    return build_unet(TINY_UNET, in_channels=in_channels, out_channels=4, cross_attention_dim=6,
                      sample_size=4, seed=seed)


def test_pick_rotation_turns_both_crops_of_a_pair_together():
    slots = torch.arange(5.0)[None, :, None].expand(64, 5, 3)  # value = rotation slot
    z1, z2 = pick_rotation([slots, slots + 10], torch.Generator().manual_seed(0), augment=True)
    assert torch.equal(z1 + 10, z2) and len(torch.unique(z1[:, 0])) == 5
    (still,) = pick_rotation([slots], torch.Generator().manual_seed(0), augment=False)
    assert still.abs().sum() == 0


def test_cond_context_dropout_and_null_ablation():
    enc = FakeEncoder()
    ehrs = [EHR(SCT_LONG_DIA=5.0 + i) for i in range(4)]
    sched = training_scheduler(DiffusionConfig())
    gen = torch.Generator().manual_seed(0)
    dropped = CondTask(_unet(), sched, enc, False, False, dropout=0.999).context(ehrs, gen, True, torch.device("cpu"))
    assert dropped.abs().sum() == 0
    kept = CondTask(_unet(), sched, enc, False, False, dropout=0.999).context(ehrs, gen, False, torch.device("cpu"))
    assert kept.abs().sum() > 0  # no dropout at validation
    null_task = CondTask(_unet(), sched, enc, True, False)
    assert null_task.context(ehrs, gen, True, torch.device("cpu")).abs().sum() == 0
    assert set(null_task.trainable()) == {"unet"}


def test_condition_dropout_replaces_c_at_the_configured_rate():
    """Each record's C is the null context with probability diffusion.condition_dropout
    (seeded); over 4,000 records the share lies in the binomial 99.9% interval."""
    n, rate = 4000, 0.15
    ehrs = [EHR(SCT_LONG_DIA=5.0 + i % 7) for i in range(n)]
    task = CondTask(_unet(), training_scheduler(DiffusionConfig()), FakeEncoder(), False, False, dropout=rate)
    c = task.context(ehrs, torch.Generator().manual_seed(3), True, torch.device("cpu"))
    dropped = (c.flatten(1).abs().sum(1) == 0).float().mean().item()
    half_width = 3.29 * (rate * (1 - rate) / n) ** 0.5
    assert abs(dropped - rate) < half_width, dropped
    again = task.context(ehrs, torch.Generator().manual_seed(3), True, torch.device("cpu"))
    assert torch.equal(c, again)


def test_null_context_passes_only_when_needed():
    """An empty-prompt null C is a language-model pass: the image-only model makes it once, and
    condition dropout only in a batch where a record is dropped."""
    enc = _fake("empty_prompt")
    calls = []
    real = enc.empty_prompt_context
    enc.empty_prompt_context = lambda: calls.append(1) or real()
    ehrs = [EHR(SCT_LONG_DIA=5.0 + i) for i in range(3)]
    sched, gen, cpu = training_scheduler(DiffusionConfig()), torch.Generator().manual_seed(0), torch.device("cpu")
    null_task = CondTask(_unet(), sched, enc, True, False)
    first = null_task.context(ehrs, gen, True, cpu)
    assert torch.equal(null_task.context(ehrs, gen, True, cpu), first) and len(calls) == 1
    assert first.shape == (3, enc.n_tokens, enc.dim) and torch.allclose(first[0], real()[0])
    calls.clear()
    CondTask(_unet(), sched, enc, False, False, dropout=1e-9).context(ehrs, gen, True, cpu)
    assert not calls  # nothing dropped: no pass
    CondTask(_unet(), sched, enc, False, False, dropout=0.999).context(ehrs, gen, True, cpu)
    assert len(calls) == 1


def test_cond_trains_soft_prompts_and_checkpoints_only_them(tmp_path):
    enc = FakeEncoder()
    g = torch.Generator().manual_seed(1)
    data = Pairs(torch.randn(4, 4, 4, 4, generator=g), torch.randn(4, 4, 4, 4, generator=g),
                 [EHR(SCT_LONG_DIA=4.0 + i) for i in range(4)])
    task = CondTask(_unet(), training_scheduler(DiffusionConfig()), enc, False, True)
    Trainer(TrainConfig(lr=1e-2, batch_size=4, max_steps=3, checkpoint_every=3), tmp_path).fit(task, data)
    assert enc.prompts.abs().sum() > 0  # moved from their zero start
    saved = load_file(str(tmp_path / "checkpoints/last/prompts.safetensors"))
    assert list(saved) == ["params.0"] and torch.equal(saved["params.0"], enc.prompts.detach())


class CountingEncoder(FakeEncoder):
    """FakeEncoder that counts the records it encodes."""

    def __init__(self):
        super().__init__()
        self.encoded = 0

    def forward(self, ehrs):
        self.encoded += len(ehrs)
        return super().forward(ehrs)


def _prompt_fit(folder, steps: int, prompt_steps: int | None, resume: bool = False):
    """A cond task on four in-memory pairs trained `steps` constant-rate steps."""
    g = torch.Generator().manual_seed(1)
    data = Pairs(torch.randn(4, 4, 4, 4, generator=g), torch.randn(4, 4, 4, 4, generator=g),
                 [EHR(SCT_LONG_DIA=4.0 + i) for i in range(4)])
    enc = CountingEncoder()
    task = CondTask(_unet(), training_scheduler(DiffusionConfig()), enc, False, True,
                    draws=2, prompt_steps=prompt_steps)
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=steps, checkpoint_every=1)
    Trainer(cfg, folder).fit(task, data, resume=resume)
    return task, enc


def test_prompts_freeze_after_prompt_steps_and_each_record_is_encoded_once_more(tmp_path):
    """With prompt_steps = 2 the prompts after five steps are those after two, the U-Net keeps
    learning, and the encoder runs once per record after the freeze instead of every step."""
    _, two = _prompt_fit(tmp_path / "two", 2, None)
    _, five = _prompt_fit(tmp_path / "five", 5, 2)
    _, joint = _prompt_fit(tmp_path / "joint", 5, None)
    assert torch.equal(five.prompts, two.prompts) and not torch.equal(joint.prompts, two.prompts)
    assert five.encoded == 2 * 4 + 4 and joint.encoded == 5 * 4  # 2 joint batches, then 4 records once
    unet_two = load_file(str(tmp_path / "two/checkpoints/last/unet.safetensors"))
    unet_five = load_file(str(tmp_path / "five/checkpoints/last/unet.safetensors"))
    assert any(not torch.equal(unet_two[k], unet_five[k]) for k in unet_two)


def test_a_run_resumed_after_the_freeze_matches_an_uninterrupted_one(tmp_path):
    _prompt_fit(tmp_path / "full", 5, 2)
    _prompt_fit(tmp_path / "part", 3, 2)
    _prompt_fit(tmp_path / "part", 5, 2, resume=True)
    for name in ("unet", "prompts"):
        full = load_file(str(tmp_path / f"full/checkpoints/last/{name}.safetensors"))
        part = load_file(str(tmp_path / f"part/checkpoints/last/{name}.safetensors"))
        assert all(torch.equal(full[k], part[k]) for k in full), name


def test_prior_loss_is_reproducible_from_the_step_generator():
    task = PriorTask(_unet(4), training_scheduler(DiffusionConfig()), torch.zeros(1, 2, 6), True)
    batch = {"z": torch.randn(3, 5, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    a, _ = task.loss(batch, torch.Generator().manual_seed(5), True)
    b, _ = task.loss(batch, torch.Generator().manual_seed(5), True)
    c, _ = task.loss(batch, torch.Generator().manual_seed(6), True)
    assert a.item() == b.item() != c.item()


def _fit_small(z1, z2, ehrs, folder):
    """A small cond U-Net trained 300 steps on in-memory pairs (the overfitting checks)."""
    enc = FakeEncoder()
    unet = build_unet(TINY_UNET.model_copy(update={"block_out_channels": (16, 32)}), in_channels=8,
                      out_channels=4, cross_attention_dim=6, sample_size=4, seed=0)
    task = CondTask(unet, training_scheduler(DiffusionConfig()), enc, False, False)
    cfg = TrainConfig(lr=5e-3, batch_size=32, max_steps=300, checkpoint_every=10**6, val_every=10**6)
    Trainer(cfg, folder).fit(task, Pairs(z1, z2, ehrs))
    return unet, task, enc


def test_overfits_a_handful_of_pairs(tmp_path):
    """A small model trained on four pairs with unrelated random follow-ups (only learnable by
    using the conditioning) generates follow-ups close to their own targets, far from others."""
    g = torch.Generator().manual_seed(0)
    n = 4
    z1, z2 = torch.randn(n, 4, 4, 4, generator=g), torch.randn(n, 4, 4, 4, generator=g)
    ehrs = [EHR(SCT_LONG_DIA=4.0 + 3 * i) for i in range(n)]
    unet, task, enc = _fit_small(z1, z2, ehrs, tmp_path)
    with torch.no_grad():
        cond = Conditioning([f"p{i}" for i in range(n)], z1, enc(ehrs), enc.null_context(1, "cpu")[0])
    out = sample_latents(unet.eval(), dict(task.scheduler.config), cond, SamplingConfig(k=2, steps=10),
                         (4, 4, 4), show_progress=False)
    dist = ((out[:, :, None] - z2[None, None]) ** 2).flatten(3).mean(-1)  # (nodule, k, target)
    own = dist[torch.arange(n), :, torch.arange(n)]                        # (nodule, k)
    others = dist.masked_fill(torch.eye(n, dtype=torch.bool)[:, None, :], float("inf")).amin(-1)
    # targets are N(0, 1): two unrelated latents lie ~2 apart (mean squared difference)
    assert own.mean() < 0.4 and (own * 3 < others).all(), (own, others)


def test_swapping_c_moves_a_trained_models_samples_to_the_other_patients_follow_up(tmp_path):
    """Four patients share one baseline and differ in their record and follow-up: a small model
    trained on them can only tell them apart through C, so sampling a patient with another's C
    must land on the other's follow-up (issue 18: swapping C changes the samples)."""
    g = torch.Generator().manual_seed(0)
    n = 4
    z1 = torch.randn(1, 4, 4, 4, generator=g).expand(n, -1, -1, -1).contiguous()
    z2 = torch.randn(n, 4, 4, 4, generator=g)
    ehrs = [EHR(SCT_LONG_DIA=4.0 + 3 * i) for i in range(n)]
    unet, task, enc = _fit_small(z1, z2, ehrs, tmp_path)
    swap = torch.tensor([1, 2, 3, 0])
    with torch.no_grad():
        c = enc(ehrs)
        null = enc.null_context(1, "cpu")[0]
        draws = [sample_latents(unet.eval(), dict(task.scheduler.config),
                                Conditioning([f"p{i}" for i in range(n)], z1, ctx, null),
                                SamplingConfig(k=2, steps=10), (4, 4, 4), show_progress=False)
                 for ctx in (c, c[swap])]
    own, swapped = (((d.mean(1) - z2[idx]) ** 2).flatten(1).mean(1) for d, idx in
                    zip(draws, (torch.arange(n), swap), strict=True))
    moved = ((draws[0] - draws[1]) ** 2).flatten(2).mean(-1)
    # targets are N(0, 1): unrelated latents lie ~2 apart (mean squared difference)
    assert (own < 0.5).all() and (swapped < 0.5).all() and (moved > 0.5).all(), (own, swapped, moved)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_null_context_model_overfits_through_the_baseline_alone(tmp_path, prediction_type):
    """With the null context only z_baseline tells the pairs apart: a model trained on a handful
    of pairs must predict the noise far better with its true baselines than with shuffled ones
    (measured 0.07 for epsilon, 0.06 for v; a model that ignores the baseline scores 1)."""
    g = torch.Generator().manual_seed(2)
    n = 6
    z1, z2 = torch.randn(n, 4, 4, 4, generator=g), torch.randn(n, 4, 4, 4, generator=g)
    unet = build_unet(TINY_UNET.model_copy(update={"block_out_channels": (16, 32)}), in_channels=8,
                      out_channels=4, cross_attention_dim=6, sample_size=4, seed=0)
    enc = FakeEncoder()
    sched = training_scheduler(DiffusionConfig(prediction_type=prediction_type))
    task = CondTask(unet, sched, enc, True, False, draws=4)
    cfg = TrainConfig(lr=5e-3, batch_size=n, max_steps=250, checkpoint_every=10**6, val_every=10**6)
    Trainer(cfg, tmp_path).fit(task, Pairs(z1, z2, [EHR() for _ in range(n)]))
    unet.eval()
    null, abar = enc.null_context(1, "cpu")[0], sched.alphas_cumprod

    def eps(x, t, b, c):
        return as_epsilon(unet(torch.cat([x, b], 1), t, encoder_hidden_states=c).sample, x, t,
                          abar, prediction_type)

    result = measure(eps, None, abar, z1, z2, null.expand(n, -1, -1), null, n_timesteps=10)
    assert result["ratio"] < 0.2, result


def test_cond_draws_repeat_each_pair_with_its_context_computed_once():
    calls = []

    class Counting(FakeEncoder):
        def forward(self, ehrs):
            calls.append(len(ehrs))
            return super().forward(ehrs)

    task = CondTask(_unet(), training_scheduler(DiffusionConfig()), Counting(), False, True, draws=3)
    seen = []
    task.unet.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].shape[0]), with_kwargs=True)
    batch = {"z1": torch.randn(2, 5, 4, 4, 4), "z2": torch.randn(2, 5, 4, 4, 4),
             "ehr": [EHR(SCT_LONG_DIA=5.0), EHR(SCT_LONG_DIA=9.0)]}
    task.loss(batch, torch.Generator().manual_seed(0), True)
    task.loss(batch, torch.Generator().manual_seed(0), False)  # validation: one draw per pair
    assert calls == [2, 2] and seen == [6, 2]


def test_min_snr_weighting_down_weights_low_noise_steps():
    from namd.training.diffusion import noise_mse

    sched = training_scheduler(DiffusionConfig(prediction_type="epsilon"))
    pred, noise = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    t = torch.tensor([5, 900])
    assert float(noise_mse(pred, noise, sched, t, None)[0]) == 1.0
    weighted, plain = (float(v) for v in noise_mse(pred, noise, sched, t, 5.0))
    assert plain == 1.0
    assert 0.5 < weighted < 0.6  # t = 5 has SNR >> 5, so its term is scaled down; t = 900 keeps 1
    v_sched = training_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    # for v the weight is min(SNR, gamma) / (SNR + 1): at most 5/6 at low noise, SNR/(SNR+1) at high
    assert float(noise_mse(pred, noise, v_sched, t, 5.0)[0]) < weighted


# -- the run-directory contract ------------------------------------------------------------------
def _write_cohort(path, size=16):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    writer = CohortWriter(path, crop_size=size, pixel_spacing_mm=0.7, source="test")

    def disc(r):
        return (np.where(xx ** 2 + yy ** 2 <= r * r, 40.0, -800.0) + rng.normal(0, 10, (size, size))).astype(np.float32)

    for i, split in enumerate(["train"] * 4 + ["val", "val", "test", "test"]):
        label, r = i % 2, 2 + i % 3
        ehr = EHR(SCT_LONG_DIA=1.4 * r, SCT_PERP_DIA=1.2 * r, age=60.0, gender=1)
        for kind, t, rad in (("baseline", 0, r), ("followup", 1, r + 2 * label)):
            writer.add(disc(rad), patient_id=f"p{i}", nodule_id="n", kind=kind, split=split,
                       label=label, ehr=ehr, pair_id=f"pair{i}", timepoint=t)
    for j in range(2):
        writer.add(disc(3), patient_id=f"u{j}", nodule_id="n", kind="unpaired", split="train",
                   label=None, ehr=EHR())
    writer.close()


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setattr(context_factory, "build_context_encoder", lambda cfg, null_mode="zeros": _fake(null_mode))
    fake = _fake()
    monkeypatch.setattr(context_factory, "context_shape", lambda cfg: (fake.n_tokens, fake.dim))
    run = RunDir(tmp_path / "run")
    _write_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=[
        "data.crop_size=16", "diffusion.unet.block_out_channels=[8,16]", "diffusion.unet.norm_num_groups=4",
        "diffusion.unet.attention_head_dim=2", "diffusion.prior.max_steps=4", "diffusion.prior.batch_size=4",
        "diffusion.prior.val_every=2", "diffusion.prior.checkpoint_every=2", "diffusion.cond.max_steps=4",
        "diffusion.cond.batch_size=2", "diffusion.cond.val_every=2", "diffusion.cond.checkpoint_every=2",
        "sampling.k=3", "sampling.steps=2", "sampling.grids=1", "sampling.max_batch=4",
        "vae.pretrained=null", "diffusion.unet.pretrained=null"])  # 16-pixel crops: no foundation
    save_config(config, run.path / "config.yaml")
    torch.manual_seed(0)
    save_trained_vae(build_vae(config.vae.model_copy(update={"block_out_channels": (8, 8, 8), "norm_num_groups": 4})),
                     run.stage("vae"), scale_factor=0.7)
    run.mark_done("vae", config, 0)
    return run, config


def test_prior_cond_sample_end_to_end(tiny_run, monkeypatch):
    run, config = tiny_run
    with monkeypatch.context() as patch:  # the prior needs the encoder's shape, not the encoder
        patch.setattr(context_factory, "build_context_encoder", None)
        prior = run_stage(config, run, stage="prior")
    assert run.is_done("prior") and (prior / "unet/diffusion_pytorch_model.safetensors").is_file()
    assert (run.path / "cache/latents_vae.safetensors").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        run_stage(config, run, stage="prior")

    cond = run_stage(config, run, stage="cond")
    info = json.loads((cond / "run_info.json").read_text())
    assert info["complete"] and info["from_prior"]["widened"] == ["conv_in.weight"]
    assert not info["from_prior"]["reinitialised"]
    assert json.loads((cond / "unet/config.json").read_text())["in_channels"] == 8
    assert list(load_file(str(cond / "context_encoder.safetensors"))) == ["prompts"]
    assert json.loads((cond / "context_encoder.json").read_text())["dim"] == 6
    use = json.loads((cond / "baseline_use.json").read_text())
    assert use["n_pairs"] == 2 and len(use["bands"]) == 4 and use["loss_prior"] > 0
    assert info["baseline_use"]["ratio"] == use["ratio"]

    assert main(["sample", "--run", str(run.path), "--k", "3", "--steps", "2"]) == 0
    out = run.stage("samples")
    samples = np.load(out / "samples.npy")
    index = pd.read_csv(out / "index.csv")
    assert samples.shape == (2, 3, 16, 16) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and samples.min() >= -1000 and samples.max() <= 400
    assert index["pair_id"].tolist() == ["pair6", "pair7"] and set(index["split"]) == {"test"}
    assert len(list((out / "grids").glob("*.png"))) == 1 and run.is_done("samples")
    assert main(["sample", "--run", str(run.path)]) == 1  # exists: one-line error, no overwrite


def test_a_trained_model_sampled_with_the_null_context(tiny_run, monkeypatch):
    """sampling.drop_context: the cond model itself with C = its null context (a guided model's
    own null-context counterpart), i.e. what it draws when every record encodes to the null C."""
    run, config = tiny_run
    run_stage(config, run, stage="prior")
    run_stage(config, run, stage="cond")
    def draw(*extra):
        assert main(["sample", "--run", str(run.path), "--overwrite", *extra]) == 0
        return np.load(run.stage("samples") / "samples.npy")
    record = draw()
    null = draw("--set", "sampling.drop_context=true")
    assert np.abs(record - null).max() > 0
    info = json.loads((run.stage("samples") / "run_info.json").read_text())
    assert info["config"]["sampling"]["drop_context"] is True
    monkeypatch.setattr(FakeEncoder, "forward", lambda self, ehrs: torch.zeros(len(ehrs), self.n_tokens, self.dim))
    assert np.array_equal(draw(), null)


def test_null_context_ablation_and_resume(tiny_run):
    run, config = tiny_run
    run_stage(config, run, stage="prior")
    null = run_stage(config, run, stage="cond", method="null_context")
    assert null.name == "cond_null_context" and run.is_done("cond_null_context")
    assert json.loads((null / "context_encoder.json").read_text())["null_context"] is True
    (null / "run_info.json").unlink()  # as if stopped after its last checkpoint
    config.diffusion.cond.max_steps = 6
    with pytest.raises(FileExistsError, match="resume"):  # never silently restarted
        run_stage(config, run, stage="cond", method="null_context")
    run_stage(config, run, stage="cond", method="null_context", resume=True)
    info = json.loads((null / "run_info.json").read_text())
    assert info["steps"] == 6 and info["null_context"] is True


def test_empty_prompt_null_context_the_authors_way(tiny_run, tmp_path):
    """diffusion.null_context = empty_prompt: stage 1 trains on CLIP's empty-prompt embedding
    (its own width, saved with the prior), stage 2 widens cross-attention to the encoder's D
    (key/value projections start afresh) and its null context is the encoder's empty sentence."""
    from helpers import save_tiny_clip

    from namd.models.null_context import load_null

    run, config = tiny_run
    config = config.model_copy(deep=True)
    config.diffusion.null_context = "empty_prompt"
    config.diffusion.clip_text = str(save_tiny_clip(tmp_path / "sd15", hidden=16))
    prior = run_stage(config, run, stage="prior")
    null = load_null(prior)
    assert null.shape == (1, 77, 16)
    assert json.loads((prior / "unet/config.json").read_text())["cross_attention_dim"] == 16
    cond = run_stage(config, run, stage="cond")
    info = json.loads((cond / "run_info.json").read_text())
    fresh = info["from_prior"]["reinitialised"]
    assert fresh and all("attn2.to_k" in k or "attn2.to_v" in k for k in fresh)
    spec = json.loads((cond / "context_encoder.json").read_text())
    assert spec["null_mode"] == "empty_prompt" and spec["dim"] == 6
    assert json.loads((cond / "baseline_use.json").read_text())["loss_prior"] > 0  # the prior on CLIP's C
    from namd.inference.sampler import load_context_encoder

    encoder, _ = load_context_encoder(cond)
    torch.testing.assert_close(encoder.null_context(2), (encoder.prompts[None] + 0.5).expand(2, -1, -1))
