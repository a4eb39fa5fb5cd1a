"""The U-Net factory: SD1.5 size, local pretrained weights, and the stage 1 -> 2 hand-over."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from namd.config import UNetConfig, load_config
from namd.models.unet import (
    build_unet,
    count_parameters,
    load_pretrained_into,
    load_unet,
    save_unet,
    transfer_weights,
    widen_conv_in,
)

TINY = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=2)


def _tiny(in_channels: int = 4, dim: int = 6, seed: int = 0):
    return build_unet(TINY, in_channels=in_channels, out_channels=4, cross_attention_dim=dim,
                      sample_size=4, seed=seed)


def test_paper_preset_is_sd15_size_on_meta_device():
    cfg = load_config("paper").diffusion.unet
    with torch.device("meta"):
        sd15 = build_unet(cfg, in_channels=4, out_channels=4, cross_attention_dim=768, sample_size=8)
        namd = build_unet(cfg, in_channels=8, out_channels=4, cross_attention_dim=2560, sample_size=8)
    assert next(sd15.parameters()).is_meta
    # diffusers' SD1.5 U-Net has 859,520,964 parameters ("about 860M")
    assert count_parameters(sd15) == 859_520_964
    # MedGemma's D = 2560 widens only the cross-attention key/value projections (+ conv_in)
    assert 890e6 < count_parameters(namd) < 920e6


def test_tiny_forward_shape_and_seeded_init():
    unet = _tiny()
    out = unet(torch.randn(3, 4, 4, 4), torch.tensor([1, 500, 999]), encoder_hidden_states=torch.randn(3, 2, 6)).sample
    assert out.shape == (3, 4, 4, 4)
    a, b, c = _tiny(seed=1).state_dict(), _tiny(seed=1).state_dict(), _tiny(seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])


def test_widened_stage_two_reproduces_stage_one_at_initialisation():
    prior = _tiny().eval()
    cond, report = widen_conv_in(prior, 8)
    assert report.widened == ["conv_in.weight"] and not report.reinitialised
    assert torch.count_nonzero(cond.conv_in.weight[:, 4:]) == 0
    noisy, baseline = torch.randn(5, 4, 4, 4), torch.randn(5, 4, 4, 4) * 3
    t, ctx = torch.randint(0, 1000, (5,)), torch.randn(5, 2, 6)
    with torch.no_grad():
        eps1 = prior(noisy, t, encoder_hidden_states=ctx).sample
        eps2 = cond.eval()(torch.cat([noisy, baseline], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(eps2, eps1, rtol=0, atol=1e-6)


def test_context_width_change_reinitialises_only_cross_attention_kv():
    src = _tiny(dim=6)
    dst = build_unet(TINY, in_channels=8, out_channels=4, cross_attention_dim=10, sample_size=4, seed=3)
    report = transfer_weights(src.state_dict(), dst)
    assert report.reinitialised and all("attn2.to_k" in k or "attn2.to_v" in k for k in report.reinitialised)
    assert report.widened == ["conv_in.weight"]
    assert 0.5 < report.share < 1.0


def test_mismatched_layout_is_refused():
    big = build_unet(UNetConfig(block_out_channels=(16, 32), norm_num_groups=4, attention_head_dim=2),
                     in_channels=4, out_channels=4, cross_attention_dim=6, sample_size=4)
    with pytest.raises(ValueError, match="match"):
        transfer_weights(big.state_dict(), _tiny(), min_share=0.5)


def test_pretrained_from_local_folder_and_single_file(tmp_path):
    source = _tiny(seed=7)
    source.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "unet.safetensors"))
    for path in (tmp_path / "sd", tmp_path / "sd" / "unet", tmp_path / "unet.safetensors"):
        target = _tiny(seed=8)
        cfg = TINY.model_copy(update={"pretrained": str(path)})
        report = load_pretrained_into(target, cfg)
        assert report is not None and report.share == 1.0
        assert torch.equal(target.conv_in.weight, source.conv_in.weight)
    assert load_pretrained_into(_tiny(), TINY) is None


def test_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained_into(_tiny(), TINY.model_copy(update={"pretrained": str(tmp_path / "nope")}))
    (tmp_path / "v1-5.ckpt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="never unpickles"):
        load_pretrained_into(_tiny(), TINY.model_copy(update={"pretrained": str(tmp_path / "v1-5.ckpt")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no diffusers U-Net"):
        load_pretrained_into(_tiny(), TINY.model_copy(update={"pretrained": str(tmp_path / "empty")}))


def test_save_and_load_roundtrip(tmp_path):
    unet = _tiny(seed=4)
    save_unet(unet, tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_unet(tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in unet.state_dict().items())
    with pytest.raises(FileNotFoundError, match="finished"):
        load_unet(tmp_path / "missing")
