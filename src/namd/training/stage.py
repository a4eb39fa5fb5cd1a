"""What every training stage module shares around the shared trainer: the stage folder (refused
when finished or interrupted without a flag, cleared under --overwrite only once the inputs
are read), the cohort's latent cache under a VAE, a split's rows, and one call that trains a
task and keeps its validation-selected weights. NAMD's prior and cond stages
(`namd.training.diffusion`) and the compared methods' own (`flux`, `ddlcxr`) use them alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from accelerate import Accelerator

from namd.config import NamdConfig, methods
from namd.run.checkpoint import has_checkpoint, load_best
from namd.run.layout import RunDir
from namd.training.latents import ROTATIONS, LatentStore, cache_path, load_or_build
from namd.training.trainer import FitResult, Trainer


def check_out(run: RunDir, name: str, *, resume: bool, overwrite: bool) -> Path:
    """The stage folder; refuses to clobber a finished or interrupted stage without a flag.
    Under --overwrite the old folder is removed only later (`clear_out`), once the inputs have
    been read, so a damaged input does not cost the stage it would have replaced."""
    out = run.stage(name)
    if overwrite:
        return out
    if run.is_done(name) and not resume:
        raise FileExistsError(f"{out} is already trained (use --overwrite to retrain)")
    elif has_checkpoint(out / "checkpoints" / "last") and not resume:
        raise FileExistsError(f"{out} holds an interrupted training: use --resume to continue "
                              "it or --overwrite to start again")
    return out


def clear_out(out: Path, overwrite: bool) -> None:
    """Remove the old stage folder under --overwrite (its inputs read and usable by now)."""
    if overwrite and out.exists():
        shutil.rmtree(out)


def fit_stage(trainer: Trainer, task: Any, train: Any, val: Any | None, out: Path,
              acc: Accelerator, *, resume: bool, overwrite: bool) -> FitResult:
    """Train a stage's task with the shared trainer into `out` and keep its validation-selected
    weights; under --overwrite the old folder goes only now, its inputs read and usable."""
    if acc.is_main_process:
        clear_out(out, overwrite)
    acc.wait_for_everyone()
    result = trainer.fit(task, train, val, resume=resume)
    load_best(out, task.trainable())
    return result


def latent_store(config: NamdConfig, run: RunDir, vae_name: str, acc: Accelerator,
                 rotations: tuple[int, ...] = ROTATIONS) -> LatentStore:
    """The cohort's latents under `rotations` (built by the main process, then read by all)."""
    vae_dir = run.require(vae_name, "train prior/cond")
    if not run.is_done(vae_name):
        owner = methods.owner(vae_name)
        command = " ".join(["namd train vae --run", str(run.path), *(owner[0].argv if owner else ())])
        raise FileNotFoundError(f"{vae_dir} is not finished: run `{command}` first")
    cohort_dir = run.require("cohort", "train prior/cond")
    args = (cache_path(run.path, vae_name), cohort_dir, vae_dir, config.data.window_hu,
            config.diffusion.encode_batch, acc.device, rotations)
    if acc.is_main_process:
        load_or_build(*args)
    acc.wait_for_everyone()
    return load_or_build(*args)


def split_rows(frame: pd.DataFrame, what: str, split: str, needed: bool) -> pd.DataFrame | None:
    """Rows of a split, an error when a needed split is empty."""
    if len(frame):
        return frame
    if needed:
        raise ValueError(f"the cohort has no {what} in the {split} split")
    return None
