"""A training killed with SIGKILL inside a checkpoint write resumes to an uninterrupted run's
exact final weights.

Run as a script this file is the child process, `python test_crash_resume.py OUT KILL STEP
[--resume]`: it trains the toy task below (dropout, EMA, warm-up + cosine, clipping, validation)
into OUT. KILL says where the child kills itself (SIGKILL, so no handler or `finally` runs)
inside the write of checkpoints/last at STEP, which makes the crash deterministic:
  files   after the first file of the new checkpoint (a half-written `.last.*.partial` folder);
  rename  between atomic_dir's two renames (the old `last` moved aside, the new one not in);
  none    no kill.
The child prints the step it resumed from and, when it finishes, how many steps it ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from namd.config import TrainConfig
from namd.run import checkpoint
from namd.training import trainer
from namd.training.trainer import Trainer

EVERY = 4  # checkpoint and validation interval


def config() -> TrainConfig:
    """Every piece of state a resume must restore is in use."""
    return TrainConfig(lr=0.05, batch_size=8, max_steps=20, checkpoint_every=EVERY, val_every=EVERY,
                       val_batches=2, seed=7, warmup_steps=3, warmup_start_lr=1e-3, schedule="cosine",
                       min_lr=1e-3, grad_clip=1.0, ema_decay=0.9)


class Data:
    """y = 3 sum(x) - 1, as a BatchSource."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.x = torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
        self.y = self.x.sum(1, keepdim=True) * 3 - 1

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": self.x[indices], "y": self.y[indices]}


class Task:
    """A small MLP with dropout (torch's global RNG) and input noise (the step generator)."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))
        self.steps_run = 0

    def trainable(self):
        return {"net": self.net}

    def frozen(self):
        return {}

    def loss(self, batch, generator, train):
        self.steps_run += int(train)
        noise = torch.randn(batch["x"].shape, generator=generator) * 0.05 if train else 0.0
        mse = (self.net(batch["x"] + noise) - batch["y"]).pow(2).mean()
        return mse, {"mse": float(mse.detach())}


def train(out: Path, resume: bool) -> int:
    """Train the toy task into `out`; returns the training steps this call ran."""
    task = Task()
    Trainer(config(), out).fit(task, Data(40, seed=0), Data(16, seed=1), resume=resume)
    return task.steps_run


def arm(kill: str, at_step: int) -> None:
    """Make this process SIGKILL itself at the `kill` point of the `last` write of `at_step`,
    and print the step a resume starts from."""
    armed = False
    save_checkpoint, save_module, replace = trainer.save_checkpoint, checkpoint.save_module, os.replace
    load_checkpoint = trainer.load_checkpoint

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch_checkpoint(path, modules, optimizer, state):
        nonlocal armed
        armed = Path(path).name == "last" and state["step"] == at_step
        save_checkpoint(path, modules, optimizer, state)

    def watch_load(path, modules, optimizer):
        state = load_checkpoint(path, modules, optimizer)
        print("resumed from", state["step"], flush=True)
        return state

    def watch_module(module, path, metadata=None):
        save_module(module, path, metadata)
        if armed and kill == "files":
            die()

    def watch_replace(src, dst):
        replace(src, dst)
        if armed and kill == "rename" and Path(src).name == "last":  # old folder just moved aside
            die()

    trainer.save_checkpoint, trainer.load_checkpoint = watch_checkpoint, watch_load
    checkpoint.save_module, os.replace = watch_module, watch_replace


def _child(out: Path, kill: str, step: int, resume: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAMD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, str(out), kill, str(step), *(["--resume"] if resume else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _step(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["step"]


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of both final checkpoints: weights, EMA, AdamW moments."""
    found = {}
    for file in sorted((out / "checkpoints").glob("*/*.safetensors")):
        found.update({f"{file.parent.name}/{file.stem}/{k}": v for k, v in load_file(str(file)).items()})
    return found


def test_sigkill_inside_checkpoint_writes_then_resume_gives_the_same_weights(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # 1. killed with half the files of step 8's checkpoint written: step 4's stays in place
    first = _child(run, "files", 8, resume=False)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert _step(ckpts / "last") == 4 and list(ckpts.glob(".last.*.partial"))
    # 2. resumed, then killed between the renames of step 16's: only the aside copy is left
    second = _child(run, "rename", 16, resume=True)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert second.stdout.split() == ["resumed", "from", "4"]
    assert not (ckpts / "last").exists() and _step(ckpts / ".last.old") == 12
    # 3. resumed from the aside copy to the end
    third = _child(run, "none", 0, resume=True)
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout.split() == ["resumed", "from", "12", str(config().max_steps - 12)]
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last"]  # no leftovers

    train(tmp_path / "reference", resume=False)
    want, got = _tensors(tmp_path / "reference"), _tensors(run)
    assert want.keys() == got.keys() and any(k.startswith("last/ema_net") for k in want)
    for key in want:
        assert torch.equal(want[key], got[key]), key


if __name__ == "__main__":
    torch.set_num_threads(1)
    arm(sys.argv[2], int(sys.argv[3]))
    print(train(Path(sys.argv[1]), resume="--resume" in sys.argv))
