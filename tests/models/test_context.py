"""The shared interface, the factory and the context cache."""

from __future__ import annotations

import pytest
import torch

from namd.cohort.ehr import EHR
from namd.config.text import StructuredConfig, TextConfig
from namd.models.context import (
    ContextCache,
    ContextEncoder,
    StandardizedContext,
)
from namd.models.context_factory import build_context_encoder
from namd.models.structured import StructuredEncoder
from namd.models.text import LLMContextEncoder


@pytest.fixture(params=["llm", "structured"])
def encoder(request, tiny_llama_dir) -> ContextEncoder:
    """Each kind of encoder, small."""
    cfg = TextConfig(encoder=request.param, model=str(tiny_llama_dir), n_prompt_sets=3,
                     structured=StructuredConfig(hidden=16), standardize=False)
    return build_context_encoder(cfg)


def test_factory_builds_the_named_encoder(encoder):
    kind = LLMContextEncoder if isinstance(encoder, LLMContextEncoder) else StructuredEncoder
    assert isinstance(encoder, kind) and isinstance(encoder, ContextEncoder)
    assert (encoder.dim, encoder.n_tokens) == (32, 3)


@pytest.fixture
def standardized(tiny_llama_dir) -> StandardizedContext:
    """The default: the LLM encoder wrapped in the standardisation."""
    enc = build_context_encoder(TextConfig(model=str(tiny_llama_dir), n_prompt_sets=2))
    assert isinstance(enc, StandardizedContext) and isinstance(enc.inner, LLMContextEncoder)
    return enc


def test_standardize_fits_zero_mean_unit_spread(standardized, ehrs):
    raw = standardized.inner(ehrs).detach()
    summary = standardized.fit(ehrs, batch_size=3)
    out = standardized(ehrs).detach()
    assert summary["records"] == len(ehrs)
    assert summary["mean_abs_value"] == pytest.approx(float(raw.abs().mean()), rel=1e-5)
    torch.testing.assert_close(out.mean(0), torch.zeros_like(out[0]), atol=1e-4, rtol=0)
    spread = raw.std(0)
    kept = spread >= 0.1 * spread.median()  # values whose spread was not floored
    torch.testing.assert_close(out.std(0)[kept], torch.ones(int(kept.sum())), atol=1e-3, rtol=1e-3)
    assert not standardized.null_context(2).any()


def test_standardize_keeps_gradient_to_the_prompts(standardized, ehrs):
    standardized.fit(ehrs)
    standardized(ehrs).square().sum().backward()
    assert standardized.inner.prompts.grad is not None and standardized.inner.prompts.grad.abs().sum() > 0
    assert not standardized.mean.requires_grad


def test_standardize_state_round_trip(standardized, ehrs, tiny_llama_dir):
    standardized.fit(ehrs)
    state = standardized.trainable_state_dict()
    assert set(state) == {"inner.prompts", *StandardizedContext.STATE}
    fresh = build_context_encoder(TextConfig(model=str(tiny_llama_dir), n_prompt_sets=2))
    cache = ContextCache(fresh)
    before = cache(ehrs[:2])
    fresh.load_trainable_state_dict(state)
    torch.testing.assert_close(fresh(ehrs), standardized(ehrs), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cache(ehrs[:2]), before)  # the cache saw the new statistics
    with pytest.raises(ValueError, match="standardize=false"):
        fresh.load_trainable_state_dict({"inner.prompts": state["inner.prompts"]})


def test_interface(encoder, ehrs):
    out = encoder(ehrs)
    assert out.shape == (len(ehrs), 3, 32) and out.dtype == torch.float32
    assert encoder(ehrs[:0]).shape == (0, 3, 32)
    assert not encoder.null_context(2).any()
    names = {n for n, _ in encoder.named_parameters() if _.requires_grad}
    assert set(encoder.trainable_state_dict()) == names
    assert all(not t.requires_grad for t in encoder.trainable_state_dict().values())


class Counting:
    """Wraps an encoder's forward and counts the records it encodes."""

    def __init__(self, encoder: ContextEncoder) -> None:
        self.records = 0
        self.inner = encoder.forward
        encoder.forward = self

    def __call__(self, ehrs):
        self.records += len(ehrs)
        return self.inner(ehrs)


def test_cache_computes_each_record_once(encoder, ehrs):
    direct = encoder(ehrs).detach()
    counter = Counting(encoder)
    cache = ContextCache(encoder, batch_size=4)
    repeated = [e for _ in range(3) for e in ehrs]  # e.g. K samples of each record
    out = cache(repeated)
    assert counter.records == len(ehrs) and len(cache) == len(ehrs)
    assert not out.requires_grad
    torch.testing.assert_close(out, direct.repeat(3, 1, 1), atol=1e-5, rtol=1e-4)
    for _ in range(5):  # e.g. DDIM steps
        cache(ehrs)
    assert counter.records == len(ehrs)
    assert (cache.hits, cache.misses) == (len(repeated) - len(ehrs) + 5 * len(ehrs), len(ehrs))


def test_cache_with_record_ids(encoder, ehrs):
    cache = ContextCache(encoder)
    a = cache(ehrs[:2], keys=["p1", "p2"])
    b = cache([EHR(), EHR()], keys=["p2", "p1"])  # the ids, not the records, are the keys
    torch.testing.assert_close(b, a.flip(0), atol=0, rtol=0)
    with pytest.raises(ValueError, match="keys"):
        cache(ehrs, keys=["p1"])


def test_cache_refreshes_after_a_training_step(encoder, ehrs):
    cache = ContextCache(encoder)
    before = cache(ehrs)
    optimiser = torch.optim.SGD(encoder.trainable_parameters(), lr=0.5)
    encoder(ehrs).pow(2).sum().backward()
    optimiser.step()
    after = cache(ehrs)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, encoder(ehrs).detach(), atol=1e-5, rtol=1e-4)
