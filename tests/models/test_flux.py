"""The Flux row's networks: 2x2 packing, the widened input embedding, pretrained weights,
the config's checks and the stage's size for `namd check`."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from namd.config import load_config
from namd.config.flux import FluxTransformerConfig
from namd.models.flux import (
    build_transformer,
    image_ids,
    load_pretrained_into,
    pack,
    sizing_parts,
    unpack,
    velocity,
)

TINY = FluxTransformerConfig(num_layers=1, num_single_layers=1, num_attention_heads=2,
                             attention_head_dim=8, axes_dims_rope=(2, 2, 4))


def _inputs(b: int = 2, c: int = 4, size: int = 4, length: int = 5, dim: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, size, size, generator=g), torch.randn(b, c, size, size, generator=g),
            torch.rand(b, generator=g), torch.randn(b, length, dim, generator=g),
            torch.randn(b, dim, generator=g))


def test_packing_round_trips_and_keeps_channel_blocks():
    z = torch.randn(3, 4, 8, 6)
    tokens = pack(z)
    assert tokens.shape == (3, 4 * 3, 16)
    assert torch.equal(unpack(tokens, 8, 6), z)
    # token (row 0, col 0) holds channel 0's 2x2 patch first (c * 4 + 2 * dy + dx)
    assert torch.equal(tokens[0, 0, :4], z[0, 0, :2, :2].reshape(-1))
    # [noisy, baseline] concatenated before packing = their packed tokens side by side, so the
    # first 4C inputs of x_embedder read the noisy latent (Flux Control's widening)
    other = torch.randn(3, 4, 8, 6)
    assert torch.equal(pack(torch.cat([z, other], 1)), torch.cat([pack(z), pack(other)], -1))
    with pytest.raises(ValueError, match="even"):
        pack(torch.randn(1, 4, 5, 4))


def test_image_ids_are_rows_and_columns_of_the_packed_grid():
    ids = image_ids(8, 6)
    assert ids.shape == (12, 3) and ids[:, 0].abs().sum() == 0
    assert ids[4].tolist() == [0.0, 1.0, 1.0] and ids[-1].tolist() == [0.0, 3.0, 2.0]


def test_transformer_widths_and_seeded_initialisation():
    model = build_transformer(TINY, latent_channels=4, joint_dim=6, pooled_dim=6, seed=3)
    assert model.x_embedder.in_features == 32 and model.proj_out.out_features == 16
    assert not model.config.guidance_embeds  # FLUX.1-schnell's layout
    again = build_transformer(TINY, latent_channels=4, joint_dim=6, pooled_dim=6, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  again.state_dict().values(), strict=True))
    out = velocity(model.eval(), *_inputs())
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()


def test_pretrained_weights_load_with_the_input_embedding_widened(tmp_path):
    """A checkpoint without the baseline's inputs (Flux's own layout) loads into the widened
    transformer: every tensor copied, x_embedder's new columns zero, so the widened model
    predicts what the pretrained one did whatever the baseline holds."""
    source = build_transformer(TINY, latent_channels=4, joint_dim=6, pooled_dim=6, seed=1)
    plain = type(source).from_config({**source.config, "in_channels": 16})  # no baseline inputs
    plain.load_state_dict({**source.state_dict(), "x_embedder.weight": source.x_embedder.weight[:, :16]})
    plain.save_pretrained(tmp_path / "flux" / "transformer", safe_serialization=True)
    wide = build_transformer(TINY, latent_channels=4, joint_dim=6, pooled_dim=6, seed=2)
    report = load_pretrained_into(wide, str(tmp_path / "flux"), min_share=0.9)
    assert report.widened == ["x_embedder.weight"] and not report.reinitialised
    assert wide.x_embedder.weight[:, 16:].abs().sum() == 0
    x, base, s, tokens, pooled = _inputs()
    hidden = pack(x)
    with torch.no_grad():
        expected = plain.eval()(hidden_states=hidden, timestep=s, pooled_projections=pooled,
                                encoder_hidden_states=tokens, txt_ids=torch.zeros(5, 3),
                                img_ids=image_ids(4, 4), return_dict=False)[0]
        got = velocity(wide.eval(), x, base, s, tokens, pooled)
    torch.testing.assert_close(got, unpack(expected, 4, 4))


def test_pretrained_weights_that_do_not_fit_are_refused(tmp_path):
    other = FluxTransformerConfig(num_layers=1, num_single_layers=1, num_attention_heads=2,
                                  attention_head_dim=16, axes_dims_rope=(4, 6, 6))
    build_transformer(other, latent_channels=4, joint_dim=6, pooled_dim=6).save_pretrained(
        tmp_path / "t", safe_serialization=True)
    model = build_transformer(TINY, latent_channels=4, joint_dim=6, pooled_dim=6)
    with pytest.raises(ValueError, match="flux.pretrained: only"):
        load_pretrained_into(model, str(tmp_path / "t"), min_share=0.9)
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_pretrained_into(model, str(tmp_path / "missing"), min_share=0.9)


def test_rope_axes_must_fill_a_head():
    with pytest.raises(ValidationError, match="axes_dims_rope"):
        FluxTransformerConfig(attention_head_dim=32, axes_dims_rope=(8, 8, 8))
    with pytest.raises(ValidationError, match="axes_dims_rope"):
        FluxTransformerConfig(attention_head_dim=30, axes_dims_rope=(5, 13, 12))


def test_paper_size_is_flux1_and_full_fine_tuning_does_not_fit_48_gb():
    """FLUX.1's 11.9B-parameter transformer (19 + 38 blocks, 24 x 128, T5 4096 / CLIP 768),
    sized on meta tensors: weights, gradients and AdamW alone pass 48 GB."""
    config = load_config("paper")
    trainable, frozen, loss, note = sizing_parts(config, 1)
    (model,) = trainable
    params = sum(p.numel() for p in model.parameters())
    assert 11.8e9 < params < 12.0e9 and frozen == []
    assert model.config.joint_attention_dim == 4096 and model.config.pooled_projection_dim == 768
    assert 16 * params > 48e9 and "encoded once" in note
    assert loss().device.type == "meta"


def test_cpu_size_steps_on_meta():
    config = load_config("tiny")
    trainable, _, loss, note = sizing_parts(config, 4)
    assert sum(p.numel() for p in trainable[0].parameters()) < 2e6
    assert loss().shape == () and "80 text tokens" in note
