"""The one training loop every stage uses (VAE, prior, conditional U-Net, evaluator).

A stage supplies a `TrainTask` (its networks and its loss) and two `BatchSource`s; the trainer
supplies AdamW, the learning-rate schedule, gradient clipping, gradient accumulation, mixed
precision and multi-GPU data parallelism via `accelerate`, validation-based checkpoint
selection, CSV logs of every loss term, optional EMA, safetensors checkpoints and exact resume.

Steps: one step is one optimizer step of grad_accum micro-batches per process (effective batch
batch_size x grad_accum x processes); max_steps, epochs (`namd.training.schedule`), the
learning rate, checkpoints, validation and the log all count optimizer steps.

Multi-GPU as accelerate intends: `TaskModule` holds the task's trainable modules and its
forward is the task's loss; `accelerator.prepare` wraps it (DistributedDataParallel with several
processes, so gradients are all-reduced in buckets during backward) with the optimizer, and
`accelerator.accumulate` skips that all-reduce on all but the last micro-batch of a step.
Frozen modules stay unwrapped; EMA copies and checkpoints use the task's own modules.

Exact resume without saving RNG state: the data order of epoch e is a permutation seeded by
(seed, e), and micro-batch k of step s on process r is a fixed slice of it. All randomness a
task draws inside that micro-batch (noise, timesteps, augmentation) comes from a generator
seeded by (seed, micro id), micro id = (s x grad_accum + k) x processes + r (= s on one process
without accumulation), and torch's global RNG, which dropout layers draw from, is seeded from
the same id for the forward pass and restored after it. The step, the weights, the AdamW
moments, EMA copies and the fp16 loss scale are checkpointed at step boundaries (no gradient is
ever half accumulated there); the learning rate is a function of the step. A run stopped (or
killed) and resumed with the same number of processes therefore replays the same steps: its
final weights equal an uninterrupted run's bit for bit.

Deterministic operations (Appendix B, TrainConfig.deterministic): `enable_determinism`. The
trainer uses no torch DataLoader (BatchSource.batch runs in this process), so there are no
loader workers to seed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator

from namd.config import TrainConfig
from namd.config.base import CUBLAS_WORKSPACE
from namd.run.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    recover,
    save_checkpoint,
)
from namd.run.provenance import progress
from namd.training.csvlog import CsvLog
from namd.training.schedule import TrainPlan, learning_rate, plan_steps

Batch = dict[str, torch.Tensor]
log = logging.getLogger(__name__)


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
        """The scalar loss (a mean over the batch) and its logged terms; all randomness from
        `generator`. It calls the modules of `trainable()` itself (e.g. vae.encode)."""
        ...

    # Optional hooks (looked up with getattr, so tasks without them keep the default behaviour):
    #   val_metrics(data: BatchSource) -> dict[str, float]: metrics over the whole validation
    #       source (e.g. AUROC), computed in eval mode and logged beside the loss terms;
    #   select_on: tuple[str, "min" | "max"] | None: the validation value that picks the best
    #       checkpoint (default ("loss", "min")); None = validate and log only, export the last
    #       weights (for validation sets too small to choose between checkpoints);
    #   at_step(step: int) -> None: called before each optimizer step with its index (0-based,
    #       the same on resume), for a loss that changes over training (DDL-CXR's ramp).


class TaskModule(torch.nn.Module):
    """The task's trainable modules as one module whose forward is the task's training loss.

    This is what `accelerator.prepare` wraps. The task keeps calling its own modules (any
    method, not only forward), and they are the very objects held here, so DDP's gradient hooks
    on their parameters fire and the all-reduce overlaps backward.
    """

    def __init__(self, task: TrainTask):
        super().__init__()
        object.__setattr__(self, "task", task)  # a plain attribute, never a submodule
        self.parts = torch.nn.ModuleDict(task.trainable())

    def forward(self, batch: Batch, generator: torch.Generator, train: bool = True
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logged terms) of one micro-batch."""
        return self.task.loss(batch, generator, train)


def enable_determinism() -> None:
    """Appendix B's "deterministic operations": deterministic kernels everywhere (an op without
    one raises), cuDNN deterministic without autotuning, and cuBLAS's fixed workspace (the
    variable only counts before the first cuBLAS call, so TrainConfig sets it at load too).
    Process-wide and left on: later stages of the same process stay deterministic."""
    os.environ.setdefault(*CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that owns all randomness of one micro-batch (`step`: its micro id)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@contextlib.contextmanager
def global_rng(seed: int, step: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (CPU and `device`) for one micro-batch's forward pass, then
    restore it.

    Dropout layers draw from the global RNG, not from the step generator; seeding it per micro
    id makes their masks a function of (seed, id), so a resumed run draws the same ones. The
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
    plan: dict = field(default_factory=dict)  # TrainPlan.as_dict(): the resolved length


class Trainer:
    """Runs a TrainTask for its resolved number of optimizer steps, writing checkpoints and
    logs under `out`."""

    def __init__(self, cfg: TrainConfig, out: Path, accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision,
                                              gradient_accumulation_steps=cfg.grad_accum)
        self.ckpt_last = self.out / "checkpoints" / "last"
        self.ckpt_best = self.out / "checkpoints" / "best"
        self.csv_log = CsvLog(self.out / "log.csv", enabled=self.acc.is_main_process)
        self.prepared: torch.nn.Module | None = None  # the last fit's TaskModule as prepared

    # -- data order ---------------------------------------------------------------------------
    def batch_indices(self, n: int, step: int, micro: int = 0) -> np.ndarray:
        """Indices of this process's micro-batch `micro` of optimizer step `step`
        (deterministic): a step takes the next batch_size x grad_accum x processes items of the
        epoch's permutation, micro-batch k of process r the (k x processes + r)-th slice."""
        world, rank, size = self.acc.num_processes, self.acc.process_index, self.cfg.batch_size
        global_size = size * world * self.cfg.grad_accum
        per_epoch = max(1, n // global_size)
        epoch, pos = divmod(step, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
        if n < global_size:
            perm = np.resize(perm, global_size)
        chunk = perm[pos * global_size:(pos + 1) * global_size]
        start = (micro * world + rank) * size
        return chunk[start:start + size]

    def micro_id(self, step: int, micro: int) -> int:
        """The seed offset of micro-batch `micro` of `step` on this process (= step on one
        process without accumulation), distinct over steps, micro-batches and processes."""
        return (step * self.cfg.grad_accum + micro) * self.acc.num_processes + self.acc.process_index

    def plan(self, n_train: int) -> TrainPlan:
        """The resolved number of optimizer steps for a training split of `n_train` items."""
        return plan_steps(self.cfg, n_train, self.acc.num_processes)

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

    # -- one optimizer step ---------------------------------------------------------------------
    def _optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        params: list[torch.nn.Parameter], train: BatchSource,
                        step: int) -> tuple[float, dict[str, float]]:
        """Accumulate grad_accum micro-batches (each its own data and generator) into one
        optimizer step; returns the mean loss and terms over them. accelerate divides each
        micro-batch's loss by grad_accum in `backward`, syncs gradients (DDP) only in the last
        one, where `sync_gradients` is true, and the prepared optimizer steps and zeroes only
        then, so clipping sees the whole step's gradient."""
        cfg, acc = self.cfg, self.acc
        losses: list[float] = []
        totals: dict[str, list[float]] = {}
        for k in range(cfg.grad_accum):
            micro = self.micro_id(step, k)
            batch = self._to_device(train.batch(self.batch_indices(len(train), step, k)))
            with acc.accumulate(model):
                with global_rng(cfg.seed, micro, acc.device):
                    loss, terms = model(batch, step_generator(cfg.seed, micro), True)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.out.name}: loss became {float(loss.detach())} "
                                             f"at step {step}")
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip:
                    acc.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            for key, value in terms.items():
                totals.setdefault(key, []).append(value)
        if not acc.sync_gradients:  # accelerate's micro-batch count is off the step boundary
            raise RuntimeError(f"{self.out.name}: step {step} ended without a gradient sync")
        return float(np.mean(losses)), {key: float(np.mean(v)) for key, v in totals.items()}

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, task: TrainTask, train: BatchSource, val: BatchSource | None = None,
            resume: bool = False) -> FitResult:
        """Train; with `resume`, continue from checkpoints/last when it exists."""
        cfg, acc = self.cfg, self.acc
        if cfg.deterministic:
            enable_determinism()
        acc.gradient_accumulation_steps = cfg.grad_accum  # also for an accelerator made elsewhere
        acc.step = 0  # accelerate's micro-batch counter: every fit starts on a step boundary
        plan = self.plan(len(train))
        total = plan.steps
        if acc.is_main_process:
            log.info("%s: %d optimizer steps (%s; %.3g epochs of %d items, effective batch %d = "
                     "%d x %d accumulated x %d processes)", self.out.name, total, plan.source,
                     plan.epochs, plan.train_items, plan.effective_batch, plan.batch_size,
                     plan.grad_accum, plan.processes)
        self.out.mkdir(parents=True, exist_ok=True)
        for m in task.frozen().values():
            m.to(acc.device).eval().requires_grad_(False)
        model = TaskModule(task).to(acc.device)
        modules = dict(model.parts.items())  # the task's own modules, never a wrapper
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        # Every trainable parameter enters every training loss of the four stages (checked;
        # zero terms such as an empty L_pred stay attached to the graph), so DDP runs without
        # find_unused_parameters and its extra graph traversal per step; a cond stage whose soft
        # prompts freeze (diffusion.prompt_steps) gives its accelerator that flag itself.
        model, optimizer = acc.prepare(model, optimizer)
        self.prepared = model
        ema = {f"ema_{k}": copy.deepcopy(m).requires_grad_(False)
               for k, m in modules.items()} if cfg.ema_decay else {}
        ckpt_modules = {**modules, **ema}

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
            self.csv_log.truncate(step)
        else:
            self.csv_log.clear()

        select = getattr(task, "select_on", ("loss", "min"))  # None: no selection, keep the last
        history: list[dict[str, float]] = []
        model.train()
        model.zero_grad(set_to_none=True)  # no stale gradient from before the fit enters step 1
        bar = progress(total=total, desc=f"train {self.out.name}", unit="step",
                       disable=None if acc.is_main_process else True)
        bar.update(step)
        at_step = getattr(task, "at_step", None)
        while step < total:
            if at_step is not None:
                at_step(step)
            lr = learning_rate(cfg, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, terms = self._optimizer_step(model, optimizer, params, train, step)
            self._ema_update(modules, ema)
            step += 1
            row = {"step": step, "phase": "train", "lr": lr, "loss": loss, **terms}
            self.csv_log.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if val is not None and (step % cfg.val_every == 0 or step == total):
                scores = self.validate(task, val)
                self.csv_log.append({"step": step, "phase": "val", "lr": lr, **scores})
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
            if step % cfg.checkpoint_every == 0 or step == total:
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
        return FitResult(steps=step, best_val=best_val, best_step=best_step, history=history,
                         plan=plan.as_dict())

    @torch.no_grad()
    def _ema_update(self, modules: dict[str, torch.nn.Module], ema: dict[str, torch.nn.Module]) -> None:
        """Exponential moving average of the trained weights (optional, off in the paper)."""
        if not ema:
            return
        for name, module in modules.items():
            target = ema[f"ema_{name}"]
            for e, p in zip(target.parameters(), module.parameters(), strict=True):
                e.lerp_(p.detach(), 1.0 - self.cfg.ema_decay)
