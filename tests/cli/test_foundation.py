"""`namd foundation`: one command builds the weights a run fine-tunes, from the synthetic
unpaired stream of the foundation's own seed, through the run's own stages."""

from __future__ import annotations

import torch
from helpers import TINY
from safetensors.torch import load_file

from namd.cli.main import main
from namd.config import load_config
from namd.models.foundation import FOUNDATION_SEED, verify

SMALL_BUILD = [*TINY, "foundation.crops=40", "foundation.vae.max_steps=2", "foundation.vae.batch_size=4",
               "foundation.prior.max_steps=2", "foundation.prior.batch_size=4", "vae.report_tsne_max=20"]


def test_it_builds_a_foundation_that_a_run_of_its_config_loads(tmp_path):
    out = tmp_path / "foundation"
    argv = ["foundation", "--out", str(out)]
    for item in SMALL_BUILD:
        argv += ["--set", item]
    assert main(argv) == 0
    assert not (tmp_path / "foundation.build").exists()  # the work folder is removed
    manifest = verify(out)
    assert manifest["data"] == {"crop_size": 16, "pixel_spacing_mm": 1.0, "window_hu": [-1000.0, 400.0]}
    assert manifest["source"]["seed"] == FOUNDATION_SEED and manifest["source"]["crops"] == 40
    assert manifest["vae"]["block_out_channels"] == [8, 8, 8] and manifest["vae"]["train"]["max_steps"] == 2
    assert manifest["unet"]["cross_attention_dim"] == 8
    assert manifest["source"]["train_crops"] + manifest["source"]["val_crops"] == 40

    from namd.models.unet import build_unet, load_pretrained_into
    from namd.models.vae import build_vae_from_config

    config = load_config("tiny", overrides=[*TINY, f"vae.pretrained={out}", f"diffusion.unet.pretrained={out}"])
    vae = build_vae_from_config(config.vae)
    stored = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert all(torch.equal(vae.state_dict()[k], v.float()) for k, v in stored.items())
    unet = build_unet(config.diffusion.unet, in_channels=4, out_channels=4, cross_attention_dim=8,
                      sample_size=4, seed=0)
    assert load_pretrained_into(unet, config.diffusion.unet).share == 1.0
