"""The shared trainer: schedule, deterministic order, checkpoints, exact resume, EMA."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from helpers import RegressionData, RegressionTask
from safetensors.torch import load_file

from namd.config import TrainConfig
from namd.run.checkpoint import aside_of, load_best, load_checkpoint, recover, save_checkpoint
from namd.training.schedule import learning_rate
from namd.training.trainer import Trainer, global_rng


def Task():  # the regression with input noise from the step generator
    return RegressionTask(noise=0.01)


def DropoutTask():  # the same through a dropout layer (torch's global RNG)
    return RegressionTask(noise=0.01, dropout=0.5)


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=0.05, batch_size=8, max_steps=12, checkpoint_every=4, val_every=4, val_batches=2, seed=5)
    return TrainConfig(**{**base, **kw})


def test_learning_rate_warmup_then_cosine_to_min():
    cfg = TrainConfig(lr=1e-4, warmup_start_lr=1e-6, warmup_steps=4000, schedule="cosine",
                      min_lr=1e-5, cosine_steps=100000, max_steps=104000)
    assert learning_rate(cfg, 0) == pytest.approx(1e-6)
    assert learning_rate(cfg, 2000) == pytest.approx((1e-6 + 1e-4) / 2)
    assert learning_rate(cfg, 4000) == pytest.approx(1e-4)
    assert learning_rate(cfg, 54000) == pytest.approx(1e-5 + 0.5 * 9e-5)
    assert learning_rate(cfg, 104000) == pytest.approx(1e-5)
    assert learning_rate(cfg, 200000) == pytest.approx(1e-5)


def test_fit_learns_and_logs_every_term(tmp_path):
    result = Trainer(_cfg(max_steps=60), tmp_path).fit(Task(), RegressionData(64), RegressionData(16, seed=1))
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 0.5
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert {r["phase"] for r in rows} == {"train", "val"}
    assert "mse" in rows[0] and len([r for r in rows if r["phase"] == "train"]) == 60
    assert (tmp_path / "checkpoints" / "best" / "net.safetensors").is_file()
    assert result.best_step > 0 and math.isfinite(result.best_val)


@pytest.mark.parametrize("task", [Task, DropoutTask])
def test_resume_matches_uninterrupted_run(tmp_path, task):
    Trainer(_cfg(), tmp_path / "full").fit(task(), RegressionData(40), RegressionData(16, seed=1))
    Trainer(_cfg(max_steps=8), tmp_path / "part").fit(task(), RegressionData(40), RegressionData(16, seed=1))
    with (tmp_path / "part/log.csv").open("a") as fh:
        fh.write("9,tra")  # a row torn by a kill mid-write
    torch.manual_seed(123)  # the resuming process's global RNG is wherever it happens to be
    Trainer(_cfg(), tmp_path / "part").fit(task(), RegressionData(40), RegressionData(16, seed=1), resume=True)
    full = load_file(str(tmp_path / "full/checkpoints/last/net.safetensors"))
    part = load_file(str(tmp_path / "part/checkpoints/last/net.safetensors"))
    for key in full:
        assert torch.equal(full[key], part[key]), key
    rows = list(csv.DictReader((tmp_path / "part/log.csv").open()))
    assert [int(r["step"]) for r in rows if r["phase"] == "train"] == list(range(1, 13))


def test_global_rng_is_seeded_per_step_and_restored():
    torch.manual_seed(1)
    outer = torch.get_rng_state()
    with global_rng(5, 3, torch.device("cpu")):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outer)  # the caller's stream is untouched
    with global_rng(5, 3, torch.device("cpu")):
        assert torch.equal(torch.rand(3), first)
    with global_rng(5, 4, torch.device("cpu")):
        assert not torch.equal(torch.rand(3), first)


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_restores_the_fp16_loss_scale(tmp_path, accum):
    """The GradScaler's scale grows every optimizer step here (not every micro-batch); a resume
    must not restart it."""

    def accelerator() -> Accelerator:  # accelerate makes no scaler on CPU: attach one
        acc = Accelerator()
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        return acc

    full, part, resumed = accelerator(), accelerator(), accelerator()
    Trainer(_cfg(grad_clip=None, grad_accum=accum), tmp_path / "full", full).fit(Task(), RegressionData(40))
    Trainer(_cfg(grad_clip=None, grad_accum=accum, max_steps=8), tmp_path / "part", part).fit(Task(), RegressionData(40))
    Trainer(_cfg(grad_clip=None, grad_accum=accum), tmp_path / "part", resumed).fit(Task(), RegressionData(40), resume=True)
    assert part.scaler.get_scale() == 2.0**18
    assert resumed.scaler.get_scale() == full.scaler.get_scale() == 2.0**22


def test_checkpoint_killed_between_renames_is_read_from_its_aside_copy(tmp_path, monkeypatch):
    last, net = tmp_path / "last", torch.nn.Linear(4, 1)
    save_checkpoint(last, {"net": net}, None, {"step": 4})
    replace = os.replace

    def crash_after_moving_aside(src, dst):
        replace(src, dst)
        if os.path.basename(src) == "last":
            raise KeyboardInterrupt  # stands in for a kill between the two renames

    monkeypatch.setattr(os, "replace", crash_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(last, {"net": torch.nn.Linear(4, 1)}, None, {"step": 8})
    monkeypatch.undo()
    assert not last.exists() and aside_of(last).is_dir()
    loaded = torch.nn.Linear(4, 1)
    assert load_checkpoint(last, {"net": loaded}, None)["step"] == 4
    assert torch.equal(loaded.weight, net.weight)
    (tmp_path / ".last.abc.partial").mkdir()  # a half-written checkpoint of a killed process
    recover(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_next_checkpoint_write_after_a_kill_between_renames_replaces_the_aside_copy(tmp_path):
    last = tmp_path / "last"
    save_checkpoint(last, {"net": torch.nn.Linear(4, 1)}, None, {"step": 4})
    last.rename(aside_of(last))  # what a kill between atomic_dir's renames leaves
    save_checkpoint(last, {"net": torch.nn.Linear(4, 1)}, None, {"step": 8})
    assert load_checkpoint(last, {"net": torch.nn.Linear(4, 1)}, None)["step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_epoch_order_covers_every_item_once(tmp_path):
    trainer = Trainer(_cfg(batch_size=5), tmp_path)
    seen = np.concatenate([trainer.batch_indices(20, s) for s in range(4)])
    assert sorted(seen.tolist()) == list(range(20))
    assert not np.array_equal(trainer.batch_indices(20, 0), trainer.batch_indices(20, 4))


def test_ema_weights_are_checkpointed_and_loaded(tmp_path):
    Trainer(_cfg(ema_decay=0.9), tmp_path).fit(Task(), RegressionData(40), RegressionData(16, seed=1))
    assert (tmp_path / "checkpoints/best/ema_net.safetensors").is_file()
    net = torch.nn.Linear(4, 1)
    load_best(tmp_path, {"net": net})
    ema = load_file(str(tmp_path / "checkpoints/best/ema_net.safetensors"))
    assert torch.equal(net.weight, ema["weight"])


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    class Bad(RegressionTask):
        def loss(self, batch, generator, train):
            return torch.tensor(float("nan"), requires_grad=True), {}

    with pytest.raises(FloatingPointError, match="step 0"):
        Trainer(_cfg(), tmp_path).fit(Bad(), RegressionData(16))
