"""The VAE factory and latent conventions, and SD1.5 weight loading from local paths in both
layouts (tested on a small randomly initialised model of the SD1.5 layout: 4 levels, 2 blocks,
mid attention, 3 channels)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from namd.config import VAEConfig, load_config
from namd.models.vae import (
    build_vae,
    build_vae_from_config,
    encode,
    from_network,
    latent_shape,
    load_trained_vae,
    save_trained_vae,
    to_network,
)
from namd.run.contract import RunFileError

SD_LAYOUT = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=2, in_channels=3, norm_num_groups=4)
SD15_VAE_PARAMETERS = 83_653_863  # the Stable Diffusion v1.5 AutoencoderKL


def to_original_layout(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' LDM->diffusers VAE key mapping, written independently here:
    CompVis names, 1x1-conv attention weights, decoder levels numbered bottom-up."""
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"(encoder)\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", new):
            part = f"block.{m[4]}" if m[3] == "resnets" else "downsample"
            new = f"encoder.down.{m[2]}.{part}.{m[5]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", new):
            part = f"block.{m[3]}" if m[2] == "resnets" else "upsample"
            new = f"decoder.up.{levels - 1 - int(m[1])}.{part}.{m[4]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", new):
            names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
            layer, param = m[2].rsplit(".", 1)
            new = f"{m[1]}.mid.attn_1.{names[layer]}.{param}"
            if param == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        new = new.replace("conv_shortcut", "nin_shortcut")
        out[new] = value.clone()
    return out


@pytest.fixture(scope="module")
def source_vae():
    torch.manual_seed(3)
    return build_vae(VAEConfig(**SD_LAYOUT))


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_paper_preset_is_the_sd15_vae():
    cfg = load_config("paper").vae
    assert latent_shape(cfg, 64) == (4, 8, 8)
    vae = build_vae(cfg)
    assert sum(p.numel() for p in vae.parameters()) == SD15_VAE_PARAMETERS
    assert vae.config.in_channels == 3 and vae.config.latent_channels == 4


def test_tiny_network_shapes_and_range_conventions():
    cfg = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4)
    vae = build_vae(cfg)
    hu = np.array([[[-2000.0, -1000.0], [-300.0, 400.0]]] * 3)
    x = to_network(np.tile(hu, (1, 16, 16)), (-1000.0, 400.0), 1)
    assert x.shape == (3, 1, 32, 32) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert encode(vae, x).shape == (3, *latent_shape(cfg, 32))
    back = from_network(x, (-1000.0, 400.0))
    assert float(back[0, 0, 0]) == -1000.0 and float(back[0, 1, 0]) == pytest.approx(-300.0, abs=1e-3)


def test_loads_a_diffusers_folder_and_a_pipeline_folder(tmp_path, source_vae):
    source_vae.save_pretrained(tmp_path / "vae_only", safe_serialization=True)
    source_vae.save_pretrained(tmp_path / "pipeline" / "vae", safe_serialization=True)
    for folder in ("vae_only", "pipeline"):
        loaded = build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(tmp_path / folder)))
        _assert_same_weights(loaded, source_vae)


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_loads_an_original_layout_single_file(tmp_path, source_vae, prefix):
    original = {prefix + k: v for k, v in to_original_layout(source_vae.state_dict(), 4).items()}
    assert "encoder.down.1.block.0.nin_shortcut.weight" in {k.removeprefix(prefix) for k in original}
    if prefix:  # a full SD checkpoint also holds the U-Net and text encoder
        original["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)
    path = tmp_path / "sd15.safetensors"
    save_file(original, str(path))
    loaded = build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(path)))
    _assert_same_weights(loaded, source_vae)


def test_loads_a_diffusers_layout_single_file(tmp_path, source_vae):
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in source_vae.state_dict().items()}, str(path))
    _assert_same_weights(build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(path))), source_vae)


def test_clear_errors_for_missing_pickled_or_mismatched_weights(tmp_path, source_vae):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(tmp_path / "absent")))
    ckpt = tmp_path / "v1-5-autokl.ckpt"
    ckpt.write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match="pickle"):
        build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(ckpt)))
    (tmp_path / "binfolder").mkdir()
    (tmp_path / "binfolder" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="pickle"):
        build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(tmp_path / "binfolder")))
    source_vae.save_pretrained(tmp_path / "sd", safe_serialization=True)
    one_channel = {**SD_LAYOUT, "in_channels": 1}
    with pytest.raises(ValueError, match="shape"):
        build_vae_from_config(VAEConfig(**one_channel, pretrained=str(tmp_path / "sd")))
    smaller = {**SD_LAYOUT, "block_out_channels": (8, 16, 16)}
    with pytest.raises(ValueError, match="does not fit"):
        build_vae_from_config(VAEConfig(**smaller, pretrained=str(tmp_path / "sd")))
    junk = tmp_path / "junk.safetensors"
    save_file({"unet.weight": torch.zeros(1)}, str(junk))
    with pytest.raises(ValueError, match="no VAE weights"):
        build_vae_from_config(VAEConfig(**SD_LAYOUT, pretrained=str(junk)))


def test_trained_vae_round_trip(tmp_path, source_vae):
    save_trained_vae(source_vae, tmp_path, 4.5, latent_std=1 / 4.5)
    loaded, scale = load_trained_vae(tmp_path)
    assert scale == 4.5 and not any(p.requires_grad for p in loaded.parameters())
    _assert_same_weights(loaded, source_vae)
    with pytest.raises(RunFileError, match="latent_scale.json: missing — make it: `namd train vae"):
        load_trained_vae(tmp_path / "nothing")


def test_authors_dropout_and_tanh_output_survive_save_and_load(tmp_path):
    """vae.dropout and vae.output = tanh (the authors' VAE, the paper preset): the decoder's
    output is bounded, the weights keep diffusers' names, and a saved stage decodes the same."""
    from namd.models.vae import load_trained_vae, save_trained_vae

    cfg = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, dropout=0.2, output="tanh")
    vae = build_vae(cfg)
    from diffusers.models.resnet import ResnetBlock2D

    drops = [m.dropout.p for m in vae.modules() if isinstance(m, ResnetBlock2D)]
    assert len(drops) >= 4 and all(p == 0.2 for p in drops)  # residual blocks only, as the authors' VAE
    assert set(vae.state_dict()) == set(build_vae(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4)).state_dict())
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(10.0)  # far outside [-1, 1] before the tanh
        vae.eval()
        z = torch.randn(2, 4, 4, 4)
        out = vae.decode(z).sample
    assert out.abs().max() <= 1.0 and out.min() > 0.99
    save_trained_vae(vae, tmp_path, 1.0)
    loaded, _ = load_trained_vae(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z).sample, out)
    plain = build_vae(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4))
    with torch.no_grad():
        plain.decoder.conv_out.bias.fill_(10.0)
        assert plain.eval().decode(z).sample.max() > 5  # identity output: unbounded
