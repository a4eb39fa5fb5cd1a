"""SD1.5's row of Table 1 (namd.config.methods "sd15"): NAMD's cond stage started from the
pretrained U-Net itself (no prior stage), on the no-align VAE's latents, with the frozen text
encoder's token states by cross-attention; sampled by NAMD's sampler."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SIZE, write_tiny_cohort

from namd.cli.main import main
from namd.cohort.ehr import EHR
from namd.config import load_config, methods, save_config
from namd.models.token_text import FrozenTextEncoder
from namd.models.unet import build_unet, load_pretrained_into, save_unet
from namd.models.vae import build_vae, save_trained_vae
from namd.run.layout import RunDir
from namd.training.diffusion import run_stage


@pytest.fixture(scope="module")
def sd15_run(tmp_path_factory):
    """A run with a cohort, the no-align VAE (untrained), a tiny 'pretrained' U-Net prior at the
    embedded MiniLM's width, and the SD1.5 cond stage trained on it."""
    root = tmp_path_factory.mktemp("sd15")
    run = RunDir(root / "run")
    write_tiny_cohort(run.stage("cohort"))
    torch.manual_seed(0)
    unet_cfg = {"block_out_channels": (8, 16), "norm_num_groups": 4, "attention_head_dim": 2}
    config = load_config("tiny", overrides=[
        "data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.block_out_channels=[8,8,8]",
        "vae.norm_num_groups=4", "vae.pretrained=null", "vae.align=false",
        "diffusion.unet.block_out_channels=[8,16]", "diffusion.unet.norm_num_groups=4",
        "diffusion.unet.attention_head_dim=2", f"diffusion.unet.pretrained={root / 'pretrained'}",
        "diffusion.cond.max_steps=40", "diffusion.cond.batch_size=4", "diffusion.cond.lr=3e-3",
        "diffusion.cond.val_every=20", "diffusion.cond.checkpoint_every=20", "sd15.length=64",
        "sampling.k=3", "sampling.steps=3", "sampling.grids=1", "sampling.max_batch=9"])
    save_config(config, run.path / "config.yaml")
    prior = build_unet(config.diffusion.unet.model_copy(update=unet_cfg), in_channels=4,
                       out_channels=4, cross_attention_dim=384, sample_size=4, seed=0)
    save_unet(prior, root / "pretrained")
    save_trained_vae(build_vae(config.vae), run.stage("vae_no_align"), scale_factor=0.7)
    run.mark_done("vae_no_align", config, 0)
    run_stage(config, run, stage="cond", method="sd15")
    return run, config


def test_the_sd15_stage_starts_from_the_pretrained_unet_and_learns(sd15_run):
    run, _ = sd15_run
    out = run.stage("cond_sd15")
    info = json.loads((out / "run_info.json").read_text())
    assert info["pretrained"]["widened"] == ["conv_in.weight"] and "from_prior" not in info
    assert json.loads((out / "unet/config.json").read_text())["in_channels"] == 8
    spec = json.loads((out / "context_encoder.json").read_text())
    assert (spec["kind"], spec["length"], spec["dim"], spec["clip"]) == ("tokens", 64, 384, None)
    assert not (out / "baseline_use.json").exists()  # no prior stage to compare with
    log = pd.read_csv(out / "log.csv")
    train = log[log["phase"] == "train"]["loss"].to_numpy()
    assert train[-10:].mean() < 0.9 * train[:10].mean()


def test_sd15_samples_are_seeded_and_batch_independent(sd15_run, tmp_path):
    run, config = sd15_run
    sampler = methods.get("sd15").load_sampler(run, config)
    assert isinstance(sampler.encoder, FrozenTextEncoder)
    crops = np.stack([np.full((SIZE, SIZE), -800.0, np.float32)] * 2)
    ehrs = [EHR(SCT_LONG_DIA=5.0, age=61.0), EHR(SCT_LONG_DIA=9.0, age=70.0)]
    cond = sampler.conditioning(["a", "b"], crops, ehrs)
    whole = sampler.generate(cond, config.sampling, show_progress=False)
    one = sampler.generate(cond, config.sampling.model_copy(update={"max_batch": 1}),
                           show_progress=False)
    assert torch.allclose(whole, one, atol=1e-5) and not torch.allclose(whole[:, 0], whole[:, 1])
    alone = sampler.generate(sampler.conditioning(["b"], crops[1:], ehrs[1:]), config.sampling,
                             show_progress=False)
    assert torch.allclose(alone[0], whole[1], atol=1e-5)


def test_the_sample_stage_writes_sd15s_folder(sd15_run):
    run, _ = sd15_run
    assert main(["sample", "--run", str(run.path), "--method", "sd15"]) == 0
    samples = np.load(run.stage("samples_sd15") / "samples.npy")
    assert samples.shape == (2, 3, SIZE, SIZE) and np.isfinite(samples).all()


def test_the_paper_preset_refuses_sd15_without_its_weights_or_clip(tmp_path):
    """SD1.5 fine-tunes SD1.5: without a local U-Net (and without --from-scratch), or without
    CLIP's folder, the stage refuses in one line naming the field, before writing anything."""
    from namd.config import ConfigError

    run = RunDir(tmp_path / "run")
    paper = load_config("paper", overrides=["diffusion.null_context=zeros"])  # its own check aside
    with pytest.raises(ConfigError, match="diffusion.unet.pretrained is unset and require_pretrained"):
        run_stage(paper, run, stage="cond", method="sd15")
    scratch = load_config("paper", overrides=["require_pretrained=false", "diffusion.null_context=zeros"])
    with pytest.raises(ConfigError, match="sd15.text is 'clip' .* no local CLIP text encoder"):
        run_stage(scratch, run, stage="cond", method="sd15")
    assert not run.path.exists()


def test_sd15_overfits_a_handful_of_pairs(tmp_path):
    """Trained long on four pairs, SD1.5's follow-ups of those pairs come near their real
    follow-ups (in the VAE's latent space): nearer than the baseline itself and than the
    pretrained U-Net's draws before training."""
    from namd.cohort.store import Cohort
    from namd.inference.sampler import encode_hu

    run = RunDir(tmp_path / "run")
    write_tiny_cohort(run.stage("cohort"))
    torch.manual_seed(0)
    config = load_config("tiny", overrides=[
        "data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.block_out_channels=[8,8,8]",
        "vae.norm_num_groups=4", "vae.pretrained=null", "vae.align=false",
        "diffusion.unet.block_out_channels=[16,32]",
        "diffusion.unet.norm_num_groups=4", "diffusion.unet.attention_head_dim=2",
        f"diffusion.unet.pretrained={tmp_path / 'pretrained'}", "diffusion.cond.max_steps=300",
        "diffusion.cond.batch_size=4", "diffusion.cond.lr=3e-3", "diffusion.cond.rotation_augment=false",
        "diffusion.cond.val_every=300", "diffusion.cond.checkpoint_every=300", "sd15.length=64",
        "sampling.k=4", "sampling.steps=10"])
    save_config(config, run.path / "config.yaml")
    save_unet(build_unet(config.diffusion.unet, in_channels=4, out_channels=4, cross_attention_dim=384,
                         sample_size=4, seed=0), tmp_path / "pretrained")
    vae, cohort = build_vae(config.vae), Cohort(run.stage("cohort"))
    crops = cohort.images(np.arange(len(cohort)))  # unit-variance latents, as a trained VAE's
    scale = 1.0 / float(encode_hu(vae, crops, 1.0, tuple(config.data.window_hu), 16).std())
    save_trained_vae(vae, run.stage("vae_no_align"), scale_factor=scale)
    run.mark_done("vae_no_align", config, 0)
    pairs = cohort.pairs("train")
    keys, ehrs = pairs["pair_id"].tolist(), [Cohort.ehr(r) for _, r in pairs.iterrows()]
    base = cohort.images(pairs["baseline_index"])

    def error(sampler) -> float:
        z = sampler.generate(sampler.conditioning(keys, base, ehrs), config.sampling, show_progress=False)
        real = encode_hu(sampler.vae, cohort.images(pairs["followup_index"]), sampler.scale,
                         sampler.window, 16)
        return float((z.mean(1) - real).pow(2).mean()), float((sampler.conditioning(
            keys, base, ehrs).baseline - real).pow(2).mean())

    from namd.inference.sampler import FollowUpSampler
    from namd.models.schedules import training_scheduler

    run_stage(config, run, stage="cond", method="sd15")
    trained = methods.get("sd15").load_sampler(run, config)
    start = build_unet(config.diffusion.unet, in_channels=8, out_channels=4, cross_attention_dim=384,
                       sample_size=4, seed=0)
    load_pretrained_into(start, config.diffusion.unet)  # where the stage began
    untrained = FollowUpSampler(start, trained.vae, trained.scale, trained.encoder, False,
                                dict(training_scheduler(config.diffusion).config), trained.window)
    after, copy = error(trained)
    before, _ = error(untrained)
    assert after < 0.5 * copy and after < 0.5 * before
