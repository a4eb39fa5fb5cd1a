"""The malignancy evaluator (ViT) and the evaluation protocol (paper section 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import Section, TrainConfig


class EvaluatorConfig(Section):
    """ViT classifier (tiny defaults; paper preset: patch 8, width 1024, depth 6, 32 heads, MLP 2048)."""

    patch_size: int = 8
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = Field(0.1, ge=0, lt=1)
    select_min_malignant: int = Field(
        20, ge=0, description="validation AUROC picks the checkpoint only when the validation "
        "split has at least this many malignant crops; below it the AUROC is mostly noise (the "
        "demo's 8 picked a step-50 model: test AUROC 0.48 / 0.60 on real baselines / follow-ups "
        "against 0.59 / 0.79 for the last weights) and the last weights are kept")
    calibration: Literal["platt", "none"] = Field(
        "platt", description="how the evaluator's probability is calibrated after training: "
        "platt fits sigmoid(a logit(p) + b) on the labelled validation crops (the pos_weight of "
        "the training loss makes the raw output over-call malignancy); none keeps it raw. Both "
        "leave each run's AUROC and AUPRC unchanged (the map is monotonic); the mean over K, "
        "Brier score and ECE change")
    train: TrainConfig = TrainConfig(lr=3e-4, batch_size=64, max_steps=400)


class EvalConfig(Section):
    """Protocol of `namd evaluate`."""

    bootstrap: int = Field(1000, ge=10)
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 23
    growth_threshold_hu: float = Field(
        -400.0, description="growth evidence: tissue above this HU counts towards a crop's "
        "central equivalent diameter (between lung parenchyma, about -850 HU, and a solid "
        "nodule, about 0 HU)")
    growth_radius_mm: float = Field(
        10.0, gt=0, description="growth evidence: only tissue within this radius of the crop "
        "centre counts, so a vessel or the chest wall near the crop's edge cannot pass for "
        "growth")
