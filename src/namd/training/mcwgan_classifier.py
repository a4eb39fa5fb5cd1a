"""`namd train classifier --method mcwgan`: McWGAN's nodule classifier, RUN/classifier_mcwgan.

The source computes its perceptual loss in the last hidden layer of a pre-trained, modified
ResNet-18 nodule classifier (namd.models.mcwgan.NoduleClassifier). Here it is trained from
scratch on the TRAIN split's labelled real crops only (baseline, follow-up and unpaired): never
on validation or test crops, and never the project's evaluator, which is the judge and would
leak into the generator's training. Class-weighted BCE (pos_weight = benign / malignant of the
training crops), the paper's rotations (mcwgan.classifier.train.rotation_augment). With no
validation split to select on, the last weights are exported.

Writes classifier.json, classifier.safetensors, checkpoints/, log.csv and run_info.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from namd.cohort.imaging import random_rotations, rotate
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.models.mcwgan import CLASSIFIER, NoduleClassifier, build_classifier, save_network
from namd.run.layout import RunDir
from namd.training.evaluator import CropSource, class_counts, labelled_crops
from namd.training.stage import check_out, fit_stage
from namd.training.trainer import Batch, Trainer

log = logging.getLogger(__name__)

METHOD = "mcwgan"


class ClassifierTask:
    """Class-weighted BCE on rotated real training crops; no selection (last weights)."""

    select_on = None

    def __init__(self, model: NoduleClassifier, pos_weight: float, rotate_crops: bool):
        self.model, self.pos_weight, self.rotate_crops = model, pos_weight, rotate_crops

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {CLASSIFIER: self.model}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def loss(self, batch: Batch, generator: torch.Generator, train: bool
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE of the malignancy logit; the rotation drawn from the step's generator."""
        x, y = batch["x"], batch["y"]
        if train and self.rotate_crops:
            x = rotate(x, random_rotations(len(x), generator))
        logits = self.model(x)
        weight = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits), pos_weight=weight)
        return loss, {"bce": float(loss.detach())}


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False, stage: str = "classifier") -> Path:
    """Train RUN/classifier_mcwgan on the cohort's labelled training crops; returns the folder."""
    spec = methods.get(method)
    name, cfg = spec.stage(stage).folder, config.mcwgan.classifier
    out = check_out(run, name, resume=resume, overwrite=overwrite)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    cohort = Cohort(run.require("cohort", f"train {stage} --method {method}"))
    rows = labelled_crops(cohort, "train")  # the training split only, by construction
    train = CropSource(cohort, rows, tuple(config.data.window_hu))
    n_neg, n_pos = class_counts(train.labels, f"{cohort.path} train split")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_classifier(cfg)
    task = ClassifierTask(model, n_neg / n_pos, cfg.train.rotation_augment)
    result = fit_stage(Trainer(cfg.train, out, accelerator=acc), task, train, None, out, acc,
                       resume=resume, overwrite=overwrite)
    if acc.is_main_process:
        save_network(model.cpu(), {"classifier": cfg.model_dump(mode="json", exclude={"train"}),
                                   "crop_size": cohort.crop_size,
                                   "window_hu": list(config.data.window_hu)}, out, CLASSIFIER)
        run.mark_done(name, config, cfg.train.seed, steps=result.steps, train_plan=result.plan,
                      selection="last weights (trained on the train split only, no selection)",
                      pos_weight=n_neg / n_pos, features=int(cfg.widths[-1]),
                      n_train={"crops": len(train), "malignant": n_pos, "benign": n_neg,
                               "splits": sorted(rows["split"].unique().tolist())})
    return out
