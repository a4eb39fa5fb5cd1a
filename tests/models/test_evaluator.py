"""The ViT malignancy evaluator: paper size (on the meta device), shapes, prediction helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from namd.config import EvaluatorConfig, load_config
from namd.models.evaluator import build_evaluator, load_evaluator, predict, to_input
from namd.run.contract import RunFileError


def _expected_parameters(width: int, depth: int, mlp: int, patch: int, size: int) -> int:
    """Parameters of a 1-channel ViT encoder + linear head, counted by hand."""
    tokens = (size // patch) ** 2 + 1
    embed = width + tokens * width + (patch * patch * width + width)  # cls, position, patch conv
    layer = 2 * width + 4 * (width * width + width) + 2 * width + (width * mlp + mlp) + (mlp * width + width)
    return embed + depth * layer + 2 * width + (width + 1)  # + final layer norm + head


def test_paper_preset_has_the_authors_size():
    cfg = load_config("paper").evaluator
    assert (cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.dropout) == \
        (8, 1024, 6, 32, 2048, 0.5)
    with torch.device("meta"):
        model = build_evaluator(cfg, 64)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_parameters(1024, 6, 2048, 8, 64)
    vit = model.encoder.config
    assert (vit.num_channels, vit.image_size, vit.num_attention_heads) == (1, 64, 32)
    assert vit.hidden_dropout_prob == vit.attention_probs_dropout_prob == 0.5
    assert next(model.parameters()).device.type == "meta"


def _tiny() -> EvaluatorConfig:
    return EvaluatorConfig(width=32, depth=1, heads=2, mlp_dim=64, dropout=0.5)


def test_forward_features_and_tiny_default_size():
    torch.manual_seed(0)
    model = build_evaluator(_tiny(), 32)
    x = torch.randn(3, 1, 32, 32)
    assert model(x).shape == (3,) and model.features(x).shape == (3, 32)
    default = EvaluatorConfig()
    n = sum(p.numel() for p in build_evaluator(default, 64).parameters())
    assert n == _expected_parameters(default.width, default.depth, default.mlp_dim, 8, 64)


def test_to_input_maps_the_lung_window():
    x = to_input(np.array([[[-1000.0, 400.0], [-300.0, 5000.0]]]), (-1000.0, 400.0))
    assert x.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(x[0, 0].numpy(), [[-1, 1], [0, 1]])


def test_predict_is_deterministic_batched_and_keeps_the_mode():
    torch.manual_seed(0)
    model = build_evaluator(_tiny(), 32).train()
    hu = np.random.default_rng(0).uniform(-1000, 400, (7, 32, 32)).astype(np.float32)
    p1, f1 = predict(model, hu, (-1000.0, 400.0), batch_size=3, with_features=True)
    p2, f2 = predict(model, hu, (-1000.0, 400.0), batch_size=7, with_features=True)
    assert model.training  # mode restored
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        manual = torch.sigmoid(model(to_input(hu, (-1000.0, 400.0)))).numpy()
    np.testing.assert_allclose(p1, manual, rtol=1e-5)
    assert predict(model, hu, (-1000.0, 400.0))[1] is None


def test_bad_geometry_and_missing_stage_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_evaluator(_tiny(), 30)
    with pytest.raises(ValueError, match="not divisible by heads"):
        build_evaluator(EvaluatorConfig(width=30, heads=4), 32)
    with pytest.raises(RunFileError, match="run_info.json: missing — make it: `namd train evaluator"):
        load_evaluator(tmp_path)


def test_an_ensemble_averages_independent_members():
    cfg = _tiny().model_copy(update={"members": 3})
    torch.manual_seed(0)
    model = build_evaluator(cfg, 32).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        each = model.member_logits(x)
        assert each.shape == (3, 4)
        assert not torch.allclose(each[0], each[1])  # each member from its own initial weights
        torch.testing.assert_close(model(x), each.mean(0))
        assert model.features(x).shape == (4, 3 * 32) and model.feature_dim == 96
    hu = np.random.default_rng(1).uniform(-1000, 400, (5, 32, 32)).astype(np.float32)
    p, f = predict(model, hu, (-1000.0, 400.0), batch_size=2, with_features=True)
    with torch.no_grad():
        manual = torch.sigmoid(model.member_logits(to_input(hu, (-1000.0, 400.0))).mean(0)).numpy()
    np.testing.assert_allclose(p, manual, rtol=1e-5)
    assert f.shape == (5, 96)
    single = build_evaluator(_tiny(), 32)  # members = 1 keeps the single ViT's layout and keys
    assert "head.weight" in single.state_dict() and "members.2.head.weight" in model.state_dict()
