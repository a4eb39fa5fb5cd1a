"""The shipped CPU foundation (namd.models.foundation): its files are the ones its manifest
hashes, it fits the CPU presets and loads into their networks, and it refuses in one line the
crops, networks, schedules and cohorts it was not built for."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import flip_bit
from safetensors.torch import load_file

from namd.config import FOUNDATION, ConfigError, load_config
from namd.models import foundation
from namd.models.foundation import (
    FOUNDATION_DIR,
    check_fits,
    read_manifest,
    resolve,
    started_from,
    verify,
)


def test_the_shipped_files_are_the_ones_the_manifest_hashes():
    manifest = verify(FOUNDATION_DIR)
    assert set(manifest["files"]) >= {"vae/diffusion_pytorch_model.safetensors",
                                      "unet/diffusion_pytorch_model.safetensors"}
    assert manifest["source"]["seed"] == foundation.FOUNDATION_SEED
    assert manifest["source"]["stream"] == "unpaired" and manifest["dtype"] == "float16"
    assert (FOUNDATION_DIR / "README.md").read_text().startswith("# namd CPU foundation")


def test_a_damaged_file_is_refused_naming_it(tmp_path):
    copy = tmp_path / "foundation"
    shutil.copytree(FOUNDATION_DIR, copy)
    flip_bit(copy / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"vae/diffusion_pytorch_model.safetensors: sha256 .* damaged"):
        verify(copy)


@pytest.mark.parametrize("preset", ["tiny", "bench"])
def test_the_cpu_presets_start_from_it_and_it_fits_them(preset):
    config = load_config(preset)
    assert config.vae.pretrained == FOUNDATION and config.diffusion.unet.pretrained == FOUNDATION
    check_fits(config)  # no error
    assert resolve(FOUNDATION) == FOUNDATION_DIR
    assert started_from(FOUNDATION)["files"] == {k: v["sha256"] for k, v in verify()["files"].items()}
    assert started_from(None) is None and started_from("/some/sd15") is None


def test_the_paper_preset_keeps_sd15_and_refuses_the_foundation():
    from namd.config.preflight import check_stage

    config = load_config("paper")
    assert config.vae.pretrained is None and config.diffusion.unet.pretrained is None
    with pytest.raises(ConfigError, match="vae.pretrained is namd:foundation and require_pretrained"):
        check_stage(load_config("paper", overrides=[f"vae.pretrained={FOUNDATION}"]), "vae")


def test_its_weights_load_into_the_tiny_networks():
    from namd.models.context_factory import context_shape
    from namd.models.unet import build_unet, load_pretrained_into
    from namd.models.vae import build_vae_from_config

    config = load_config("tiny")
    vae = build_vae_from_config(config.vae)
    shipped = load_file(str(FOUNDATION_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    key = "encoder.conv_in.weight"
    assert shipped[key].dtype == torch.float16
    assert torch.equal(vae.state_dict()[key], shipped[key].float())
    unet = build_unet(config.diffusion.unet, in_channels=4, out_channels=4,
                      cross_attention_dim=context_shape(config.text)[-1], sample_size=8, seed=0)
    report = load_pretrained_into(unet, config.diffusion.unet)
    assert report is not None and report.as_dict()["share"] == pytest.approx(1.0)


@pytest.mark.parametrize("override, field", [
    ("data.crop_size=32", "data.crop_size"),
    ("data.pixel_spacing_mm=1.0", "data.pixel_spacing_mm"),
    ("data.window_hu=[-1200,600]", "data.window_hu"),
    ("vae.block_out_channels=[16,32,64]", "vae.block_out_channels"),
    ("diffusion.unet.block_out_channels=[32,64]", "diffusion.unet.block_out_channels"),
    ("diffusion.prediction_type=epsilon", "diffusion.prediction_type"),
])
def test_what_it_was_not_built_for_is_refused_in_one_line(override, field):
    with pytest.raises(ConfigError) as err:
        check_fits(load_config("tiny", overrides=[override]))
    message = str(err.value)
    assert message.startswith(f"{FOUNDATION}: {field} is ") and "\n" not in message
    assert "vae.pretrained=null" in message  # what to do


def test_only_the_network_that_starts_from_it_is_checked():
    # a U-Net of another size trains from scratch while the VAE still fine-tunes the foundation
    check_fits(load_config("tiny", overrides=["diffusion.unet.block_out_channels=[32,64]",
                                              "diffusion.unet.pretrained=null"]))
    check_fits(load_config("tiny", overrides=["data.crop_size=32", "vae.pretrained=null",
                                              "diffusion.unet.pretrained=null"]))


def test_a_cohort_it_cannot_fit_or_drawn_from_its_own_seed_is_refused():
    config = load_config("tiny")
    seed = read_manifest()["source"]["seed"]
    ok = {"crop_size": 64, "pixel_spacing_mm": 0.7, "source": "synthetic", "generator": "namd-synth-1",
          "seed": 0}
    check_fits(config, ok)
    with pytest.raises(ConfigError, match="the cohort's crop_size is 32"):
        check_fits(config, {**ok, "crop_size": 32})
    with pytest.raises(ConfigError, match=f"synthetic one of seed {seed}, whose unpaired crops"):
        check_fits(config, {**ok, "seed": seed})
    check_fits(config, {**ok, "seed": seed, "source": "nlst"})  # a real cohort has no such seed
