"""The frozen text path of the compared methods (namd.models.token_text): the embedded MiniLM's
token states of the report sentence, zero-padded, with a mean-pooled vector, encoded once."""

from __future__ import annotations

import pytest
import torch

from namd.cohort.ehr import EHR
from namd.config import TextConfig
from namd.models.token_text import FrozenTextEncoder, token_spec


@pytest.fixture(scope="module")
def encoder() -> FrozenTextEncoder:
    return FrozenTextEncoder.from_config(TextConfig(), 77)


def test_token_states_are_padded_with_zeros_and_pooled_over_real_tokens(encoder):
    short, long = EHR(age=60.0, gender=1), EHR(age=61.0, gender=2, SCT_LONG_DIA=9.0, SCT_PERP_DIA=7.0)
    tokens, pooled = encoder.encode([short, long])
    assert tokens.shape == (2, 77, 384) and pooled.shape == (2, 384)
    real = (tokens.abs().sum(-1) > 0).sum(1)
    assert 0 < real[0] < real[1] < 77 and not tokens.requires_grad
    assert torch.allclose(pooled[0], tokens[0, :real[0]].mean(0), atol=1e-5)
    assert encoder.trainable_parameters() == [] and encoder([short]).shape == (1, 77, 384)
    assert token_spec(encoder) == {"kind": "tokens", "length": 77, "clip": None}


def test_each_sentence_is_encoded_once_and_the_same_in_any_batch(encoder, monkeypatch):
    a, b = EHR(age=70.0, gender=1), EHR(age=71.0, gender=1)
    both = encoder.encode([a, b])[0]
    calls = []
    monkeypatch.setattr(encoder, "_run", lambda s: calls.append(s))
    assert torch.equal(encoder.encode([b])[0][0], both[1]) and calls == []


def test_a_sentence_longer_than_the_text_path_is_refused():
    with pytest.raises(ValueError, match="report sentence of \\d+ tokens exceeds the text path's 8"):
        FrozenTextEncoder.from_config(TextConfig(), 8).encode([EHR(age=60.0, gender=1)])
