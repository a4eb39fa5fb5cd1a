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
from namd.run.contract import RunFileError

TINY = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=2,
                  pretrained=None)  # from scratch: the shipped foundation is another layout


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


def test_paper_stage_widths_on_meta_device_follow_null_context():
    """Stage 1 cross-attends to diffusion.null_context's C (CLIP's empty prompt: 768 wide, so
    SD1.5's 859,520,964 parameters), stage 2 to D = 2560 with 8 inputs: exactly the 16
    cross-attention to_k/to_v pairs widen by 2560 - 768 and conv_in gains 4 x 320 x 3 x 3."""
    from namd.sizing import prior_context_shape

    config = load_config("paper")
    cfg = config.diffusion.unet
    _, width = prior_context_shape(config, (config.text.n_prompt_sets, 2560))
    with torch.device("meta"):
        prior = build_unet(cfg, in_channels=4, out_channels=4, cross_attention_dim=width, sample_size=8)
        cond = build_unet(cfg, in_channels=8, out_channels=4, cross_attention_dim=2560, sample_size=8)
    assert config.diffusion.null_context == "empty_prompt"  # stage 1 keeps SD1.5's CLIP width
    assert width == 768 and count_parameters(prior) == 859_520_964
    attn2 = [m for name, m in cond.named_modules() if name.endswith("attn2")]
    inner = sum(m.to_k.out_features for m in attn2)
    assert len(attn2) == 16 and inner == 5 * 320 + 5 * 640 + 6 * 1280
    assert count_parameters(cond) - count_parameters(prior) == 2 * (2560 - width) * inner + 4 * 320 * 9


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
    with pytest.raises(RunFileError, match="unet/config.json: missing"):
        load_unet(tmp_path / "missing")


def _to_ldm_names(state: dict[str, torch.Tensor], levels: int, per_block: int) -> dict[str, torch.Tensor]:
    """diffusers -> original LDM key names (model.diffusion_model.*), the inverse of the mapping
    diffusers' single-file loader applies (after its convert_diffusers_to_original script)."""
    step = per_block + 1
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.attentions.0.", "middle_block.1.")]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(levels):
        for j in range(per_block):
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{step * i + j + 1}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{step * i + j + 1}.1.")]
        for j in range(per_block + 1):
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{step * i + j}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{step * i + j}.1.")]
        if i < levels - 1:
            pairs += [(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{step * (i + 1)}.0.op."),
                      (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{step * i + per_block}.{1 if i == 0 else 2}.")]
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    out = {}
    for key, value in state.items():
        new = key
        for src, dst in pairs:
            if key.startswith(src):
                new = dst + key[len(src):]
                if ".resnets." in src:
                    for a, b in resnet:
                        new = new.replace(f".{a}.", f".{b}.")
                break
        else:
            raise AssertionError(f"no LDM name for {key}")
        out["model.diffusion_model." + new] = value.contiguous()
    return out


def test_pretrained_from_an_original_ldm_single_file(tmp_path):
    cfg = UNetConfig(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                     attention_head_dim=2)  # SD1.5's block layout (2 blocks, 3 skips per level)
    source = build_unet(cfg, in_channels=4, out_channels=4, cross_attention_dim=6, sample_size=8, seed=5)
    save_file(_to_ldm_names(source.state_dict(), 3, 2), str(tmp_path / "v1-5-original.safetensors"))
    target = build_unet(cfg, in_channels=4, out_channels=4, cross_attention_dim=6, sample_size=8, seed=6)
    report = load_pretrained_into(target, cfg.model_copy(update={"pretrained": str(tmp_path / "v1-5-original.safetensors")}))
    assert report is not None and report.share == 1.0
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_pooled_context_starts_silent_then_learns_a_global_shift():
    """diffusion.pooled_context: the pooled-C embedding adds nothing until trained (the cond
    stage begins as the prior), and its gradient reaches it from the first step."""
    plain = _tiny(in_channels=8)
    pooled = build_unet(TINY, in_channels=8, out_channels=4, cross_attention_dim=6, sample_size=4,
                        seed=0, pooled_context=True)
    report = transfer_weights(plain.state_dict(), pooled)
    assert report.reinitialised and all(n.startswith("add_embedding.") for n in report.reinitialised)
    x, t = torch.randn(2, 8, 4, 4), torch.tensor([10, 500])
    c = torch.randn(2, 3, 6)
    with torch.no_grad():
        assert torch.allclose(plain(x, t, c).sample, pooled(x, t, c).sample, atol=1e-6)
    pooled(x, t, c).sample.square().mean().backward()
    assert pooled.add_embedding.norm2.weight.grad.abs().sum() > 0
    with torch.no_grad():
        pooled.add_embedding.norm2.weight.fill_(1.0)
        moved = pooled(x, t, c).sample - plain(x, t, c).sample
    assert moved.abs().mean() > 1e-3  # now C also shifts every block through the time embedding
