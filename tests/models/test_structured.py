"""The structured-EHR encoder: features, shapes, gradients, determinism, checkpoints."""

from __future__ import annotations

import pytest
import torch

from namd.cohort.ehr import EHR
from namd.config.text import StructuredConfig, TextConfig
from namd.models.context_factory import build_context_encoder
from namd.models.structured import StructuredEncoder, ehr_features, feature_names

SCALES = StructuredConfig().scales


def structured(m: int = 2, dim: int = 16, **kw) -> StructuredEncoder:
    """A small structured encoder that needs no language model."""
    cfg = TextConfig(encoder="structured", n_prompt_sets=m, standardize=False,
                     structured=StructuredConfig(dim=dim, hidden=32, **kw))
    return build_context_encoder(cfg)


def test_features_standardise_one_hot_and_flag_missing():
    names = feature_names()
    ehr = EHR(SCT_PRE_ATT=3, SCT_LONG_DIA=13.0, age=67, gender=2, famfather=1)
    row = dict(zip(names, ehr_features([ehr], SCALES)[0].tolist(), strict=True))
    centre, spread = SCALES["SCT_LONG_DIA"]
    assert row["SCT_LONG_DIA"] == pytest.approx((13.0 - centre) / spread)
    assert row["age"] == pytest.approx((67 - SCALES["age"][0]) / SCALES["age"][1])
    assert row["SCT_PRE_ATT=3"] == 1 and row["SCT_PRE_ATT=1"] == 0 and row["SCT_PRE_ATT:missing"] == 0
    assert row["gender=2"] == 1 and row["famfather=1"] == 1 and row["famfather=0"] == 0
    # missing: value 0 / no category, indicator 1
    assert row["SCT_PERP_DIA"] == 0 and row["SCT_PERP_DIA:missing"] == 1
    assert row["SCT_MARGINS:missing"] == 1
    assert sum(v for k, v in row.items() if k.startswith("SCT_MARGINS=")) == 0
    assert sum(v for k, v in row.items() if k.endswith(":missing")) == 13 - 5


def test_bad_scales_are_errors():
    with pytest.raises(ValueError, match="spread"):
        ehr_features([EHR()], {**SCALES, "age": (62.0, 0.0)})
    with pytest.raises(ValueError, match="lacks"):
        ehr_features([EHR()], {"age": (62.0, 5.0)})


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_shapes(ehrs, m):
    enc = structured(m=m)
    out = enc(ehrs)
    assert (enc.dim, enc.n_tokens) == (16, m)
    assert out.shape == (len(ehrs), m, 16) and out.dtype == torch.float32
    assert enc.null_context(3).shape == (3, m, 16)
    assert len({tuple(r.flatten().tolist()) for r in out}) == len(ehrs)  # records differ


def test_dim_defaults_to_the_language_models_hidden_size():
    enc = build_context_encoder(TextConfig(encoder="structured", structured=StructuredConfig(hidden=8)))
    assert enc.dim == 384  # all-MiniLM-L6-v2


def test_dim_from_a_local_model(tiny_llama_dir):
    cfg = TextConfig(encoder="structured", model=str(tiny_llama_dir))
    assert build_context_encoder(cfg).dim == 32


def test_gradients_reach_every_mlp_parameter(ehrs):
    enc = structured()
    params = enc.trainable_parameters()
    assert params and len(params) == len(list(enc.parameters()))
    enc(ehrs).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_initialisation_ignores_the_global_rng(ehrs):
    torch.manual_seed(1)
    a = structured()
    torch.manual_seed(2)
    b = structured()
    torch.testing.assert_close(a(ehrs), b(ehrs), atol=0, rtol=0)
    c = structured(seed=5)
    assert not torch.allclose(a(ehrs), c(ehrs))


def test_trainable_state_dict_round_trip(ehrs):
    a, b = structured(), structured(seed=7)
    b.load_trainable_state_dict(a.trainable_state_dict())
    torch.testing.assert_close(a(ehrs), b(ehrs), atol=0, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        structured(m=3).load_trainable_state_dict(a.trainable_state_dict())


def test_cache_key_separates_records():
    enc = structured()
    assert enc.cache_key(EHR(age=60)) == enc.cache_key(EHR(age=60.0))
    assert enc.cache_key(EHR(age=60)) != enc.cache_key(EHR(age=61))
    assert enc.cache_key(EHR()) != enc.cache_key(EHR(gender=1))


def test_scales_config_keeps_defaults_and_rejects_bad_values():
    from namd.config import load_config

    cfg = load_config("tiny", None, ["text.structured.scales.age=[60, 4]"])
    assert cfg.text.structured.scales == {**SCALES, "age": (60.0, 4.0)}
    with pytest.raises(ValueError, match="unknown fields"):
        load_config("tiny", None, ["text.structured.scales.weight=[70, 10]"])
    with pytest.raises(ValueError, match="spread"):
        load_config("tiny", None, ["text.structured.scales.age=[60, 0]"])
