"""`namd train evaluator`: the ViT malignancy classifier, on real crops only (paper 4.1.2).

Training data: every labelled real crop of the train split (baseline, follow-up and unpaired),
never a generated image. Class imbalance: the BCE loss weighs malignant crops by
pos_weight = n_benign / n_malignant of the training crops. Augmentation: the paper's random
rotations (Appendix B). Selection: the checkpoint with the best validation AUROC over all
labelled validation crops, through the shared trainer's optional `val_metrics` / `select_on`
hooks (the trainer's default is validation loss); with fewer malignant validation crops than
evaluator.select_min_malignant the AUROC is noise and the last weights are kept.
Calibration: Platt scaling of the selected weights on the labelled validation crops
(evaluator.calibration), written to RUN/evaluator/calibration.json before the stage is done.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from namd.cohort.imaging import random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import NamdConfig
from namd.evaluation.metrics import auprc, auroc
from namd.models.calibration import CALIBRATION_FILE, Calibration, fit_platt, not_fitted
from namd.models.evaluator import MODULE, Evaluator, build_evaluator, predict, to_input
from namd.run.checkpoint import load_best
from namd.run.layout import RunDir
from namd.training.trainer import Batch, Trainer

STAGE = "evaluator"
log = logging.getLogger(__name__)


def labelled_crops(cohort: Cohort, split: str) -> pd.DataFrame:
    """Manifest rows of the real crops of a split that carry a malignancy label (all kinds)."""
    rows = cohort.crops(split)
    return rows[rows["label"].notna()]


class CropSource:
    """A BatchSource of real crops: evaluator inputs `x` (B, 1, H, W) and labels `y` (B,)."""

    def __init__(self, cohort: Cohort, rows: pd.DataFrame, window: tuple[float, float]):
        self.cohort = cohort
        self.index = rows["crop_index"].to_numpy(dtype=np.int64)
        self.labels = rows["label"].to_numpy(dtype=np.float32)
        self.window = window

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, indices: np.ndarray) -> Batch:
        """Crops and labels of the given positions (HU -> lung window -> [-1, 1])."""
        return {"x": to_input(self.cohort.images(self.index[indices]), self.window),
                "y": torch.from_numpy(self.labels[indices])}

    def hu(self) -> np.ndarray:
        """All crops of the source in HU (N, H, W), in order."""
        return self.cohort.images(self.index)


class EvaluatorTask:
    """Weighted BCE on rotated real crops; validation AUROC selects the checkpoint."""

    # Validation AUROC picks the checkpoint; among equal AUROCs (frequent on small or easy
    # validation sets, e.g. several checkpoints at 1.0) the lower whole-set BCE wins: the
    # tie-break weight is far below the smallest AUROC step 1 / (n_malignant x n_benign).
    TIE_BREAK = 1e-7

    def __init__(self, model: Evaluator, pos_weight: float, rotation_augment: bool,
                 window: tuple[float, float], eval_batch: int, select: bool = True):
        self.select_on = ("selection", "max") if select else None  # None: keep the last weights
        self.model = model
        self.pos_weight = pos_weight
        self.rotation_augment = rotation_augment
        self.window = window
        self.eval_batch = eval_batch

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {MODULE: self.model}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Class-weighted BCE; rotations and dropout masks both drawn from `generator`, so a
        resumed run replays the same steps."""
        x, y = batch["x"], batch["y"]
        if train and self.rotation_augment:
            x = rotate(x, random_rotations(len(x), generator))
        dropout_seed = int(torch.randint(2**62, (1,), generator=generator))
        devices = [x.device.index or 0] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(dropout_seed)
            logits = self.model.member_logits(x)  # (members, B): each member its own loss
        weight = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
        target = y.to(logits.dtype).expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        return loss, {"bce": float(loss.detach())}

    def val_metrics(self, data: CropSource) -> dict[str, float]:
        """AUROC, AUPRC and class-weighted BCE of the current weights over the whole validation
        source, and the selection value (AUROC, ties broken by the BCE)."""
        model = getattr(self.model, "module", self.model)  # unwrap DDP, if any
        probs, _ = predict(model, data.hu(), self.window, self.eval_batch)
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        y = data.labels
        bce = float(-np.mean(self.pos_weight * y * np.log(p) + (1 - y) * np.log1p(-p)))
        area = auroc(y, probs)
        return {"auroc": area, "auprc": auprc(y, probs), "bce_all": bce,
                "selection": area - self.TIE_BREAK * min(bce, 100.0)}


def class_counts(labels: np.ndarray, where: str) -> tuple[int, int]:
    """(benign, malignant) counts; a clear error when either class is absent."""
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{where}: needs both benign and malignant labelled crops to train and "
                         f"select the evaluator, has {n_neg} benign and {n_pos} malignant")
    return n_neg, n_pos


def prepare_stage_dir(run: RunDir, resume: bool = False, overwrite: bool = False) -> Path:
    """The stage folder, honouring --resume / --overwrite; refuses to clobber a finished stage."""
    out = run.stage(STAGE)
    if run.is_done(STAGE) and not overwrite:
        raise FileExistsError(f"{out} is already trained (use --overwrite to retrain it)")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    elif out.exists() and not resume and any(out.iterdir()):
        raise FileExistsError(f"{out} holds an unfinished training; use --resume to continue it "
                              f"or --overwrite to start again")
    return out


def run_stage(config: NamdConfig, run: RunDir, *, resume: bool = False,
              overwrite: bool = False) -> Path:
    """Train the evaluator of `run` on its cohort's real train crops; returns RUN/evaluator."""
    cohort = Cohort(run.require("cohort", "train evaluator"))
    out = prepare_stage_dir(run, resume, overwrite)
    window = tuple(config.data.window_hu)
    train_rows, val_rows = labelled_crops(cohort, "train"), labelled_crops(cohort, "val")
    train = CropSource(cohort, train_rows, window)
    val = CropSource(cohort, val_rows, window)
    n_neg, n_pos = class_counts(train.labels, f"{cohort.path} train split")
    class_counts(val.labels, f"{cohort.path} val split")

    cfg = config.evaluator
    n_val_pos = int((val.labels == 1).sum())
    select = n_val_pos >= cfg.select_min_malignant
    selection = ("validation AUROC over all labelled val crops (ties: lower BCE)" if select else
                 f"last weights: the val split has {n_val_pos} malignant crops, fewer than "
                 f"evaluator.select_min_malignant={cfg.select_min_malignant}")
    if not select:
        log.warning("evaluator: %s", selection)
    # the initial weights from the stage's seed, not from whatever the process drew before (a
    # worker of `namd demo` that already ran other stages, or `--jobs 1`)
    torch.manual_seed(cfg.train.seed)
    model = build_evaluator(cfg, cohort.crop_size)
    task = EvaluatorTask(model, n_neg / n_pos, cfg.train.rotation_augment, window,
                         cfg.train.batch_size, select)
    result = Trainer(cfg.train, out).fit(task, train, val, resume=resume)

    load_best(out, {MODULE: model})
    final = task.val_metrics(val)
    calibration = fit_calibration(cfg.calibration, model, val, window, cfg.train.batch_size)
    calibration.save(out / CALIBRATION_FILE)
    if not calibration.fitted:
        log.warning("evaluator: calibration %s", calibration.status)
    run.mark_done(STAGE, config, cfg.train.seed, image_size=cohort.crop_size,
                  selection=selection,
                  best_step=result.best_step, steps=result.steps, train_plan=result.plan,
                  val_auroc=final["auroc"], val_auprc=final["auprc"],
                  pos_weight=n_neg / n_pos,
                  n_train={"crops": len(train), "malignant": n_pos, "benign": n_neg,
                           "by_kind": train_rows["kind"].value_counts().to_dict()},
                  n_val={"crops": len(val), "malignant": int((val.labels == 1).sum())},
                  calibration={"method": calibration.method, "status": calibration.status,
                               "file": CALIBRATION_FILE})
    return out


def fit_calibration(method: str, model: Evaluator, val: CropSource,
                    window: tuple[float, float], batch: int) -> Calibration:
    """Platt scaling of the selected weights on every labelled validation crop (the split that
    also picked the checkpoint; the test split stays unseen), or none when configured so."""
    if method == "none":
        return not_fitted("none", "evaluator.calibration = none", len(val),
                          int((val.labels == 1).sum()))
    probs, _ = predict(model, val.hu(), window, batch)
    return fit_platt(probs, val.labels)
