"""How long a stage trains and at which learning rate: the resolved number of optimizer steps
(from max_steps, or from epochs over the training split actually loaded) and the schedule.

A step is one optimizer step of batch_size x grad_accum x processes items (the effective
batch). One epoch (TrainConfig.epochs) is one pass over the items of the training split as
stored: pairs for the conditional stage, crops for the VAE, the prior and the evaluator. Rotated
copies are not counted, since the trainer draws a rotation per item and step; the authors' code
stores each item with its four rotations (45, 90, 135, 180 degrees) and counts the five copies,
so one of its epochs is five of ours (dataset.py of shxjames/NAMD).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from namd.config import TrainConfig

EPOCH = ("one pass over the training split's items as stored (pairs for cond, crops for vae / "
         "prior / evaluator), rotated copies not counted")


@dataclass(frozen=True)
class TrainPlan:
    """The resolved length of a training run, recorded with the stage's outputs."""

    steps: int  # optimizer steps
    source: str  # "epochs" or "max_steps": which setting gave `steps`
    epochs: float  # passes over the training split that `steps` amounts to
    train_items: int
    batch_size: int
    grad_accum: int
    processes: int
    effective_batch: int  # items per optimizer step, all processes together
    cosine_steps: int | None  # the cosine decay's length, None for a constant schedule
    epoch_definition: str = EPOCH

    def as_dict(self) -> dict:
        """JSON-ready (for run_info.json)."""
        return asdict(self)


def plan_steps(cfg: TrainConfig, n_train: int, processes: int) -> TrainPlan:
    """Optimizer steps for `cfg` on a training split of `n_train` items over `processes`:
    ceil(epochs x n_train / effective batch) when epochs is set, else max_steps."""
    effective = cfg.batch_size * cfg.grad_accum * processes
    if cfg.epochs is not None:
        if n_train < 1:
            raise ValueError("epochs needs a non-empty training split")
        steps, source = max(1, math.ceil(cfg.epochs * n_train / effective)), "epochs"
    else:
        steps, source = cfg.max_steps, "max_steps"
    cosine = cosine_span(cfg, steps) if cfg.schedule == "cosine" else None
    return TrainPlan(steps=steps, source=source, epochs=steps * effective / max(n_train, 1),
                     train_items=n_train, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                     processes=processes, effective_batch=effective, cosine_steps=cosine)


def cosine_span(cfg: TrainConfig, total_steps: int) -> int:
    """The cosine decay's length: cosine_steps, or the steps left after the warm-up."""
    return cfg.cosine_steps or max(1, total_steps - cfg.warmup_steps)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int | None = None) -> float:
    """Linear warm-up from warmup_start_lr, then constant or cosine decay to min_lr (Appendix B).
    `total_steps`: the run's resolved steps (default max_steps), which sets the cosine's length
    when cosine_steps is None."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = cosine_span(cfg, cfg.max_steps if total_steps is None else total_steps)
    t = min(step - cfg.warmup_steps, span) / span
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))
