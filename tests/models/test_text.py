"""The frozen language model with soft prompts: the causal (EOS) path on a tiny random Llama,
the encoder path on a tiny BERT and on the embedded MiniLM, loading errors and precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import namd.models.text as text_module
from namd.cohort.ehr import EHR, report_sentence
from namd.config.text import TextConfig
from namd.models.context_factory import build_context_encoder
from namd.models.minilm import MINILM_SHA256, minilm_dir, verify_weights
from namd.models.text import LLMContextEncoder, resolve_model_dir

HIDDEN = 32


def llama(folder: Path, **kw) -> LLMContextEncoder:
    """An encoder over the tiny Llama folder."""
    return build_context_encoder(TextConfig(model=str(folder), standardize=False, **kw))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_shapes_for_m_prompt_sets(tiny_llama_dir, ehrs, m):
    enc = llama(tiny_llama_dir, n_prompt_sets=m, n_prompt_tokens=3)
    out = enc(ehrs)
    assert (enc.dim, enc.n_tokens) == (HIDDEN, m)
    assert out.shape == (len(ehrs), m, HIDDEN) and out.dtype == torch.float32
    assert enc.prompts.shape == (m, 3, HIDDEN)
    assert torch.isfinite(out).all()
    # the m sets start from different token embeddings, so they give different vectors
    if m > 1:
        assert not torch.allclose(out[:, 0], out[:, 1])


def test_causal_path_picks_eos_after_bos_and_prompts(tiny_llama_dir, ehrs):
    """An independent rebuild of Eq. 7 for one record: [BOS, s_j, emb(e), EOS] -> last state."""
    enc = llama(tiny_llama_dir)
    assert enc.decoder and enc.pooling == "last"
    tok, lm = enc.tokenizer, enc.lm
    out = enc(ehrs)
    for b in (0, 3):
        ids = tok(report_sentence(ehrs[b]), add_special_tokens=False)["input_ids"]
        emb = lm.get_input_embeddings()
        for j in range(enc.n_tokens):
            x = torch.cat([emb(torch.tensor([tok.bos_token_id])), enc.prompts[j],
                           emb(torch.tensor(ids)), emb(torch.tensor([tok.eos_token_id]))])
            hidden = lm(inputs_embeds=x[None]).last_hidden_state[0]
            torch.testing.assert_close(out[b, j], hidden[-1], atol=1e-5, rtol=1e-4)
            # not the state of the token before EOS: the EOS position is the one taken
            assert not torch.allclose(out[b, j], hidden[-2], atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_the_context(tiny_llama_dir, tiny_bert_dir, ehrs, side):
    for folder, poolings in ((tiny_llama_dir, ["last", "mean"]), (tiny_bert_dir, ["mean", "cls"])):
        for pooling in poolings:
            enc = build_context_encoder(TextConfig(model=str(folder), padding_side=side, pooling=pooling, standardize=False))
            lengths = {len(enc.token_ids([report_sentence(e)])[0]) for e in ehrs}
            assert len(lengths) > 2, "the batch must need padding"
            batched = enc(ehrs)
            alone = torch.cat([enc([e]) for e in ehrs])
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
            assert torch.isfinite(batched).all()


def test_left_and_right_padding_agree(tiny_llama_dir, ehrs):
    left = llama(tiny_llama_dir, padding_side="left")(ehrs)
    right = llama(tiny_llama_dir, padding_side="right")(ehrs)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)


def test_gradients_reach_only_the_soft_prompts(tiny_llama_dir, ehrs):
    enc = llama(tiny_llama_dir)
    assert [id(p) for p in enc.trainable_parameters()] == [id(enc.prompts)]
    assert all(not p.requires_grad for p in enc.lm.parameters())
    enc(ehrs).pow(2).sum().backward()
    assert enc.prompts.grad is not None
    assert (enc.prompts.grad.abs().sum(dim=(1, 2)) > 0).all(), "every prompt set gets gradient"
    assert all(p.grad is None for p in enc.lm.parameters())


def test_frozen_model_stays_in_eval_mode(tiny_bert_dir, ehrs):
    """The tiny BERT has dropout 0.5: train() on the encoder must not switch it on."""
    enc = build_context_encoder(TextConfig(model=str(tiny_bert_dir), standardize=False))
    enc.train()
    assert enc.training and not enc.lm.training
    assert not any(m.training for m in enc.lm.modules())
    torch.testing.assert_close(enc(ehrs), enc(ehrs), atol=0, rtol=0)


def test_determinism_across_builds(tiny_llama_dir, ehrs):
    a, b = llama(tiny_llama_dir), llama(tiny_llama_dir)
    torch.testing.assert_close(a.prompts, b.prompts, atol=0, rtol=0)
    torch.testing.assert_close(a(ehrs), b(ehrs), atol=0, rtol=0)


def test_prompts_start_as_real_token_embeddings(tiny_llama_dir):
    enc = llama(tiny_llama_dir, n_prompt_sets=4, n_prompt_tokens=8)  # more than the init text
    table = enc.lm.get_input_embeddings().weight
    flat = enc.prompts.detach().reshape(-1, HIDDEN)
    assert (flat[:, None] == table[None]).all(-1).any(-1).all()
    specials = table[enc.tokenizer.all_special_ids]
    assert not (flat[:, None] == specials[None]).all(-1).any()
    assert len({tuple(r.tolist()) for r in flat}) > 8  # not one repeated vector
    for j in range(1, 4):
        assert not torch.equal(enc.prompts[0], enc.prompts[j])


def test_report_sentence_is_the_only_text_source(tiny_llama_dir, ehrs, monkeypatch):
    enc = llama(tiny_llama_dir)
    expected = enc.encode_text([report_sentence(e) for e in ehrs])
    seen = []

    def spy(ehr: EHR) -> str:
        seen.append(ehr)
        return report_sentence(ehr)

    monkeypatch.setattr(text_module, "report_sentence", spy)
    torch.testing.assert_close(enc(ehrs), expected, atol=0, rtol=0)
    assert seen == list(ehrs)
    monkeypatch.setattr(text_module, "report_sentence", lambda ehr: "nodule")
    changed = enc(ehrs)
    assert torch.allclose(changed[0], changed[1])  # same sentence -> same context
    assert not torch.allclose(changed, expected)


def test_trainable_state_dict_round_trip(tiny_llama_dir, ehrs, tmp_path):
    enc = llama(tiny_llama_dir)
    with torch.no_grad():
        enc.prompts.add_(0.1 * torch.randn_like(enc.prompts))
    state = enc.trainable_state_dict()
    assert list(state) == ["prompts"]
    save_file(state, tmp_path / "prompts.safetensors")
    fresh = llama(tiny_llama_dir)
    assert not torch.allclose(fresh(ehrs), enc(ehrs))
    fresh.load_trainable_state_dict(load_file(tmp_path / "prompts.safetensors"))
    torch.testing.assert_close(fresh(ehrs), enc(ehrs), atol=0, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        llama(tiny_llama_dir, n_prompt_sets=3).load_trainable_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({})


def test_null_context_is_zeros(tiny_llama_dir):
    enc = llama(tiny_llama_dir, n_prompt_sets=3)
    null = enc.null_context(5)
    assert null.shape == (5, 3, HIDDEN) and null.dtype == torch.float32
    assert not null.any()


def test_bfloat16_runs_and_returns_float32(tiny_llama_dir, ehrs):
    full = llama(tiny_llama_dir)(ehrs)
    half = llama(tiny_llama_dir, dtype="bfloat16")
    assert half.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert half.prompts.dtype == torch.float32  # trainable parameters stay float32
    out = half(ehrs)
    assert out.dtype == torch.float32 and out.shape == full.shape
    assert torch.nn.functional.cosine_similarity(out, full, dim=-1).min() > 0.95


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download google/medgemma-1.5-4b-it"):
        build_context_encoder(TextConfig(model="google/medgemma-1.5-4b-it"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(str(tmp_path))


def test_nf4_without_cuda_is_a_clear_error(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="nf4 needs a CUDA GPU"):
        llama(tiny_llama_dir, dtype="nf4")


def test_incomplete_weights_are_refused(tiny_llama_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    weights = load_file(tiny_llama_dir / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1." not in k}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="lacks weights"):
        llama(folder)


def test_sentence_longer_than_max_length_is_an_error(tiny_llama_dir, ehrs):
    with pytest.raises(ValueError, match="max_length"):
        llama(tiny_llama_dir, max_length=8)(ehrs)


# --- the embedded default: all-MiniLM-L6-v2 ---------------------------------------------------

@pytest.fixture(scope="module")
def minilm() -> LLMContextEncoder:
    """The real embedded model, loaded once for this module."""
    return build_context_encoder(TextConfig(standardize=False))


def test_minilm_default_loads_offline(minilm, ehrs):
    assert (minilm.dim, minilm.n_tokens, minilm.decoder, minilm.pooling) == (384, 1, False, "mean")
    assert minilm.prefix == [minilm.tokenizer.cls_token_id]
    out = minilm(ehrs[:3])
    assert out.shape == (3, 1, 384) and torch.isfinite(out).all()
    torch.testing.assert_close(torch.cat([minilm([e]) for e in ehrs[:3]]), out, atol=1e-5, rtol=1e-4)


def test_minilm_context_reflects_the_report(minilm):
    """A pretrained model places similar reports closer than different ones."""
    base = EHR(SCT_PRE_ATT=1, SCT_EPI_LOC=1, SCT_LONG_DIA=12.0, SCT_PERP_DIA=9.0, SCT_MARGINS=1,
               age=64, gender=1)
    near = EHR(**{**base.as_dict(), "SCT_LONG_DIA": 12.5})
    far = EHR(SCT_PRE_ATT=2, SCT_EPI_LOC=6, SCT_LONG_DIA=4.5, SCT_MARGINS=2, age=56, gender=2,
              diagemph=1, famfather=1)
    c = minilm([base, near, far]).flatten(1)
    cos = torch.nn.functional.cosine_similarity
    assert cos(c[0], c[1], dim=0) > cos(c[0], c[2], dim=0)


def test_minilm_weights_hash_is_checked(tmp_path):
    verify_weights(minilm_dir(verify=False) / "model.safetensors")
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=MINILM_SHA256[:16]):
        verify_weights(fake)
