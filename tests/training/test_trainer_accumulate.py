"""Gradient accumulation, epochs, deterministic operations and AdamW betas in the trainer."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from helpers import RegressionData, RegressionTask
from safetensors.torch import load_file

from namd.config import TrainConfig
from namd.training.schedule import learning_rate, plan_steps
from namd.training.trainer import Trainer


def MeanTask():  # a regression without any randomness
    return RegressionTask()


def NoisyDropoutTask():  # dropout (global RNG) and input noise (the step generator)
    return RegressionTask(noise=0.05, dropout=0.5)


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=0.05, batch_size=8, max_steps=12, checkpoint_every=4, val_every=4, val_batches=2, seed=5)
    return TrainConfig(**{**base, **kw})


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints/last/net.safetensors"))


def _all_tensors(out) -> dict[str, torch.Tensor]:
    """Weights, EMA copies and AdamW moments of both checkpoints."""
    found = {}
    for file in sorted((out / "checkpoints").glob("*/*.safetensors")):
        found.update({f"{file.parent.name}/{file.stem}/{k}": v for k, v in load_file(str(file)).items()})
    return found


def test_accumulating_two_batches_of_b_equals_one_batch_of_2b(tmp_path):
    """Warm-up + cosine and clipping on: the clip must see the whole step's gradient."""
    common = dict(max_steps=10, warmup_steps=2, schedule="cosine", min_lr=1e-3, grad_clip=1.0)
    one = Trainer(_cfg(batch_size=8, **common), tmp_path / "one").fit(MeanTask(), RegressionData(40), RegressionData(16, seed=1))
    two = Trainer(_cfg(batch_size=4, grad_accum=2, **common), tmp_path / "two").fit(
        MeanTask(), RegressionData(40), RegressionData(16, seed=1))
    assert one.steps == two.steps == 10
    for key, value in _weights(tmp_path / "one").items():
        assert torch.allclose(value, _weights(tmp_path / "two")[key], atol=1e-6), key
    rows = list(csv.DictReader((tmp_path / "two/log.csv").open()))
    train_rows = [r for r in rows if r["phase"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 11))  # optimizer steps
    first = list(csv.DictReader((tmp_path / "one/log.csv").open()))[0]
    assert float(train_rows[0]["loss"]) == pytest.approx(float(first["loss"]), rel=1e-5)  # unscaled mean


def test_micro_batches_of_a_step_take_distinct_items_and_generators(tmp_path):
    trainer = Trainer(_cfg(batch_size=5, grad_accum=2), tmp_path)
    steps = [np.concatenate([trainer.batch_indices(20, s, k) for k in range(2)]) for s in range(2)]
    assert sorted(np.concatenate(steps).tolist()) == list(range(20))  # one epoch, each item once
    assert [trainer.micro_id(s, k) for s in range(2) for k in range(2)] == [0, 1, 2, 3]
    assert np.array_equal(Trainer(_cfg(batch_size=10), tmp_path).batch_indices(20, 1), steps[1])


def test_resume_with_accumulation_is_bit_identical(tmp_path):
    cfg = dict(grad_accum=2, batch_size=4, ema_decay=0.9, warmup_steps=2, schedule="cosine", cosine_steps=10)
    Trainer(_cfg(**cfg), tmp_path / "full").fit(NoisyDropoutTask(), RegressionData(40), RegressionData(16, seed=1))
    Trainer(_cfg(**cfg, max_steps=8), tmp_path / "part").fit(NoisyDropoutTask(), RegressionData(40), RegressionData(16, seed=1))
    torch.manual_seed(321)  # the resuming process's global RNG is wherever it happens to be
    result = Trainer(_cfg(**cfg), tmp_path / "part").fit(NoisyDropoutTask(), RegressionData(40), RegressionData(16, seed=1),
                                                         resume=True)
    assert result.steps == 12
    want, got = _all_tensors(tmp_path / "full"), _all_tensors(tmp_path / "part")
    assert want.keys() == got.keys() and any("optimizer" in k for k in want)
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_epochs_resolve_to_optimizer_steps_over_the_loaded_split(tmp_path):
    cfg = _cfg(epochs=2.5, max_steps=1000, batch_size=4, grad_accum=2, schedule="cosine",
               min_lr=1e-3, val_every=100)
    result = Trainer(cfg, tmp_path).fit(MeanTask(), RegressionData(30), RegressionData(16, seed=1))
    assert result.steps == 10  # ceil(2.5 x 30 / (4 x 2))
    plan = result.plan
    assert (plan["steps"], plan["source"], plan["train_items"], plan["effective_batch"]) == (10, "epochs", 30, 8)
    assert plan["epochs"] == pytest.approx(10 * 8 / 30) and "rotated copies not counted" in plan["epoch_definition"]
    assert plan["cosine_steps"] == 10
    rows = [r for r in csv.DictReader((tmp_path / "log.csv").open()) if r["phase"] == "train"]
    assert float(rows[-1]["lr"]) == pytest.approx(learning_rate(cfg, 9, 10))
    assert learning_rate(cfg, 10, 10) == pytest.approx(1e-3)  # the cosine ends at the resolved steps
    assert json.loads(json.dumps(plan)) == plan  # recorded in run_info.json by the stages
    assert plan_steps(cfg, 30, processes=2).steps == 5  # ceil(2.5 x 30 / 16)
    assert plan_steps(_cfg(max_steps=7), 30, processes=1).source == "max_steps"


@pytest.fixture
def restore_determinism(monkeypatch):
    """enable_determinism is process-wide: put torch's flags back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1], flags[2]


def test_deterministic_fit_sets_the_flags_and_reproduces(tmp_path, restore_determinism):
    cfg = _cfg(deterministic=True, max_steps=6)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set as the config was made
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    Trainer(cfg, tmp_path / "a").fit(NoisyDropoutTask(), RegressionData(40), RegressionData(16, seed=1))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    Trainer(cfg, tmp_path / "b").fit(NoisyDropoutTask(), RegressionData(40), RegressionData(16, seed=1))
    for key, value in _weights(tmp_path / "a").items():
        assert torch.equal(value, _weights(tmp_path / "b")[key]), key


def test_adamw_uses_the_configured_betas(tmp_path):
    Trainer(_cfg(betas=(0.5, 0.9), max_steps=2), tmp_path).fit(MeanTask(), RegressionData(16))
    state = json.loads((tmp_path / "checkpoints/last/state.json").read_text())
    assert [g["betas"] for g in state["optimizer"]["param_groups"]] == [[0.5, 0.9]]
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(1.0, 0.9))
