"""The one training loop every stage uses (VAE, prior, conditional U-Net, evaluator).

A stage supplies a `TrainTask` (its networks and its loss) and two `BatchSource`s; the trainer
supplies AdamW, the learning-rate schedule, gradient clipping, mixed precision and multi-GPU via
`accelerate`, validation-based checkpoint selection, CSV logs of every loss term, optional EMA,
safetensors checkpoints and exact resume.

Exact resume without saving RNG state: the batch order of epoch e is a permutation seeded by
(seed, e), all randomness a task draws inside step s (noise, timesteps, augmentation) comes from
a generator seeded by (seed, s), and torch's global RNG, which dropout layers draw from, is
seeded from (seed, s) for the step's forward pass and restored after it. The step, the weights,
the AdamW moments, EMA copies and the fp16 loss scale are checkpointed; the learning rate is a
function of the step. A run stopped (or killed) and resumed therefore replays the same steps:
its final weights equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator

from namd.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    recover,
    save_checkpoint,
)
from namd.config import TrainConfig
from namd.runinfo import atomic_write_text, progress

Batch = dict[str, torch.Tensor]


class BatchSource(Protocol):
    """Indexable training data: `len()` items, `batch(indices)` gives tensors for them."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> Batch: ...


class TrainTask(Protocol):
    """What a stage hands the trainer."""

    def trainable(self) -> dict[str, torch.nn.Module]:
        """Named modules whose parameters with requires_grad are optimised and checkpointed."""
        ...

    def frozen(self) -> dict[str, torch.nn.Module]:
        """Named modules used by the loss but never updated (moved to the device, eval mode)."""
        ...

    def loss(self, batch: Batch, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss and its logged terms; all randomness from `generator`."""
        ...

    # Optional hooks (looked up with getattr, so tasks without them keep the default behaviour):
    #   val_metrics(data: BatchSource) -> dict[str, float]: metrics over the whole validation
    #       source (e.g. AUROC), computed in eval mode and logged beside the loss terms;
    #   select_on: tuple[str, "min" | "max"] | None: the validation value that picks the best
    #       checkpoint (default ("loss", "min")); None = validate and log only, export the last
    #       weights (for validation sets too small to choose between checkpoints).


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from warmup_start_lr, then constant or cosine decay to min_lr (Appendix B)."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = cfg.cosine_steps or max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(step - cfg.warmup_steps, span) / span
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that owns all randomness of one training step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@contextlib.contextmanager
def global_rng(seed: int, step: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (CPU and `device`) for one step's forward pass, then restore it.

    Dropout layers draw from the global RNG, not from the step generator; seeding it per step
    makes their masks a function of (seed, step), so a resumed run draws the same ones. The
    seed is offset from the step generator's so the two streams differ.
    """
    cuda = [device.index or 0] if device.type == "cuda" else []
    value = seed * 1_000_003 + step + 2**40
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(value)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(value)
        yield


@dataclass
class FitResult:
    """What `Trainer.fit` reports."""

    steps: int
    best_val: float  # the selection value, lower is better (negated when select_on is "max")
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Runs a TrainTask for cfg.max_steps steps, writing checkpoints and logs under `out`."""

    def __init__(self, cfg: TrainConfig, out: Path, accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
        self.ckpt_last = self.out / "checkpoints" / "last"
        self.ckpt_best = self.out / "checkpoints" / "best"
        self.log_path = self.out / "log.csv"

    # -- data order ---------------------------------------------------------------------------
    def batch_indices(self, n: int, step: int) -> np.ndarray:
        """Indices of this process's share of the global batch of `step` (deterministic)."""
        world, rank, size = self.acc.num_processes, self.acc.process_index, self.cfg.batch_size
        global_size = size * world
        per_epoch = max(1, n // global_size)
        epoch, pos = divmod(step, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
        if n < global_size:
            perm = np.resize(perm, global_size)
        chunk = perm[pos * global_size:(pos + 1) * global_size]
        return chunk[rank * size:(rank + 1) * size]

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, task: TrainTask, data: BatchSource) -> dict[str, float]:
        """Mean loss terms over the first val_batches fixed batches, with a fixed generator."""
        modules = task.trainable()
        for m in modules.values():
            m.eval()
        totals: dict[str, float] = {}
        count = 0
        size = self.cfg.batch_size
        for b in range(min(self.cfg.val_batches, math.ceil(len(data) / size))):
            idx = np.arange(b * size, min((b + 1) * size, len(data)))
            loss, terms = task.loss(self._to_device(data.batch(idx)), step_generator(self.cfg.seed, -1 - b), False)
            for k, v in {"loss": float(loss.detach()), **terms}.items():
                totals[k] = totals.get(k, 0.0) + v * len(idx)
            count += len(idx)
        scores = {k: v / max(count, 1) for k, v in totals.items()}
        whole_set = getattr(task, "val_metrics", None)  # optional hook, e.g. validation AUROC
        if whole_set is not None:
            scores.update(whole_set(data))
        for m in modules.values():
            m.train()
        return scores

    # -- logging --------------------------------------------------------------------------------
    def _log(self, row: dict[str, float]) -> None:
        """Append one row to log.csv (header from the first row, widened when a later row
        brings a new column, e.g. a validation-only metric from `val_metrics`)."""
        if not self.acc.is_main_process:
            return
        fields: list[str] = []
        if self.log_path.exists():
            with self.log_path.open(newline="") as fh:
                fields = next(csv.reader(fh), [])
        new = not fields
        extra = [k for k in row if k not in fields]
        if extra and not new:  # rewrite the log once with the wider header (atomically)
            with self.log_path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=fields + extra)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.log_path, buffer.getvalue())
        fields += extra
        with self.log_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_log(self, step: int) -> None:
        """Drop log rows after the resumed step (and a row torn by a kill) so the log reads like
        one run; rewritten atomically, so a kill here loses nothing."""
        if not self.log_path.exists() or not self.acc.is_main_process:
            return
        with self.log_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [r for r in reader if None not in r.values() and int(float(r["step"])) <= step]
            fields = list(reader.fieldnames or [])
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.log_path, buffer.getvalue())

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, task: TrainTask, train: BatchSource, val: BatchSource | None = None,
            resume: bool = False) -> FitResult:
        """Train; with `resume`, continue from checkpoints/last when it exists."""
        cfg, acc = self.cfg, self.acc
        self.out.mkdir(parents=True, exist_ok=True)
        modules = task.trainable()
        for m in task.frozen().values():
            m.to(acc.device).eval().requires_grad_(False)
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Modules stay unwrapped (tasks call their own methods, e.g. vae.encode, which a DDP
        # wrapper would bypass); data-parallel gradients are averaged in `_sync_gradients`.
        wrapped = {k: m.to(acc.device) for k, m in modules.items()}
        optimizer = acc.prepare(optimizer)
        ema = {f"ema_{k}": copy.deepcopy(m).requires_grad_(False)
               for k, m in wrapped.items()} if cfg.ema_decay else {}
        ckpt_modules = {**wrapped, **ema}

        step, best_val, best_step = 0, math.inf, -1
        if acc.is_main_process:  # undo what a killed checkpoint write left behind
            recover(self.ckpt_last)
            recover(self.ckpt_best)
        acc.wait_for_everyone()
        if resume and has_checkpoint(self.ckpt_last):
            state = load_checkpoint(self.ckpt_last, ckpt_modules, optimizer)
            step, best_val, best_step = state["step"], state["best_val"], state["best_step"]
            if acc.scaler is not None and state.get("scaler"):
                acc.scaler.load_state_dict(state["scaler"])
            self._truncate_log(step)
        elif self.log_path.exists() and acc.is_main_process:
            self.log_path.unlink()

        select = getattr(task, "select_on", ("loss", "min"))  # None: no selection, keep the last
        history: list[dict[str, float]] = []
        for m in wrapped.values():
            m.train()
        bar = progress(total=cfg.max_steps, desc=f"train {self.out.name}", unit="step",
                       disable=None if acc.is_main_process else True)
        bar.update(step)
        while step < cfg.max_steps:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = self._to_device(train.batch(self.batch_indices(len(train), step)))
            with acc.autocast(), global_rng(cfg.seed, step, acc.device):
                loss, terms = task.loss(batch, step_generator(cfg.seed, step), True)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.out.name}: loss became {float(loss.detach())} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            self._sync_gradients(params)
            if cfg.grad_clip:
                acc.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            self._ema_update(wrapped, ema)
            step += 1
            row = {"step": step, "phase": "train", "lr": lr, "loss": float(loss.detach()), **terms}
            self._log(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if val is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
                scores = self.validate(task, val)
                self._log({"step": step, "phase": "val", "lr": lr, **scores})
                history.append({"step": step, **scores})
                value = math.inf
                if select is not None:
                    key, mode = select
                    value = scores[key] if mode == "min" else -scores[key]  # lower is better
                if value < best_val:
                    best_val, best_step = value, step
                    if acc.is_main_process:
                        save_checkpoint(self.ckpt_best, ema or ckpt_modules, None,
                                        {"step": step, "best_val": best_val, "best_step": step})
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    scaler = acc.scaler.state_dict() if acc.scaler is not None else None
                    save_checkpoint(self.ckpt_last, ckpt_modules, optimizer,
                                    {"step": step, "best_val": best_val, "best_step": best_step,
                                     "scaler": scaler})
        bar.close()
        if val is None or select is None:
            best_step = step  # nothing to select on: the last weights are exported
            if acc.is_main_process:
                save_checkpoint(self.ckpt_best, ema or ckpt_modules, None,
                                {"step": step, "best_val": math.nan, "best_step": step})
        return FitResult(steps=step, best_val=best_val, best_step=best_step, history=history)

    @torch.no_grad()
    def _sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes (multi-GPU data parallelism); a no-op on one."""
        if self.acc.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    @torch.no_grad()
    def _ema_update(self, wrapped: dict[str, torch.nn.Module], ema: dict[str, torch.nn.Module]) -> None:
        """Exponential moving average of the trained weights (optional, off in the paper)."""
        if not ema:
            return
        for name, module in wrapped.items():
            target = ema[f"ema_{name}"]
            for e, p in zip(target.parameters(), module.parameters(), strict=True):
                e.lerp_(p.detach(), 1.0 - self.cfg.ema_decay)


