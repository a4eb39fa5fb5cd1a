"""Stage 1's null context: zeros of the encoder's shape, or SD1.5's CLIP embedding of the empty
prompt read from a local folder (a tiny CLIP built here), and the encoders' empty sentence."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_clip

from namd.config import load_config
from namd.config.text import StructuredConfig, TextConfig
from namd.models.context_factory import build_context_encoder, context_shape
from namd.models.null_context import clip_empty_prompt, load_null, save_null, stage_one_context


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("sd15"))


def test_clip_empty_prompt_is_the_padded_empty_sequence(clip_dir):
    from transformers import CLIPTextModel

    got = clip_empty_prompt(clip_dir)
    assert got.shape == (1, 77, 16) and got.dtype == torch.float32
    ids = torch.tensor([[0] + [1] * 76])  # [BOS, EOS, EOS, ...]: SD1.5's empty prompt
    want = CLIPTextModel.from_pretrained(clip_dir / "text_encoder").eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want)


def test_clip_folder_errors_name_the_field(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="diffusion.clip_text"):
        clip_empty_prompt(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="diffusion.clip_text: .* holds no CLIP"):
        clip_empty_prompt(tmp_path / "empty")


def test_stage_one_context_follows_the_config(clip_dir):
    cfg = TextConfig(encoder="structured", n_prompt_sets=3, structured=StructuredConfig(hidden=8, dim=12))
    encoder = build_context_encoder(cfg)
    assert context_shape(cfg) == (encoder.n_tokens, encoder.dim) == (3, 12)
    assert context_shape(TextConfig()) == (1, 384)  # MiniLM's hidden size, from its config alone
    zeros = stage_one_context(load_config("tiny"), context_shape(cfg))
    assert zeros.shape == (1, 3, 12) and not zeros.any()
    paper_like = load_config("tiny", overrides=["diffusion.null_context=empty_prompt",
                                                f"diffusion.clip_text={clip_dir}"])
    assert stage_one_context(paper_like, (3, 12)).shape == (1, 77, 16)
    # without diffusion.clip_text, the SD1.5 folder above diffusion.unet.pretrained is used
    beside = load_config("tiny", overrides=["diffusion.null_context=empty_prompt",
                                            f"diffusion.unet.pretrained={clip_dir / 'unet'}"])
    assert stage_one_context(beside, (3, 12)).shape == (1, 77, 16)


def test_saved_null_round_trips(tmp_path):
    assert load_null(tmp_path) is None  # a prior saved before the file: zeros of the encoder's shape
    value = torch.randn(1, 77, 16)
    save_null(value, tmp_path)
    torch.testing.assert_close(load_null(tmp_path), value)


def test_encoders_null_context_modes(tiny_llama_dir):
    llm = build_context_encoder(TextConfig(model=str(tiny_llama_dir), n_prompt_sets=2, standardize=False),
                                null_mode="empty_prompt")
    null = llm.null_context(3)
    torch.testing.assert_close(null, llm.encode_text([""]).expand(3, -1, -1))
    assert null.abs().sum() > 0
    null.sum().backward()  # the empty sentence goes through the soft prompts (LDM's learned "")
    assert llm.prompts.grad is not None and llm.prompts.grad.abs().sum() > 0
    zeros = build_context_encoder(TextConfig(model=str(tiny_llama_dir), standardize=False))
    assert not zeros.null_context(2).any()
    structured = build_context_encoder(TextConfig(encoder="structured", structured=StructuredConfig(hidden=8)),
                                       null_mode="empty_prompt")
    with pytest.raises(ValueError, match="text.encoder = llm"):
        structured.null_context(1)
    with pytest.raises(ValueError, match="zeros' or 'empty_prompt"):
        build_context_encoder(TextConfig(encoder="structured"), null_mode="blank")
