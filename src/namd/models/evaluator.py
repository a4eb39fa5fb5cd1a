"""The malignancy evaluator of paper 4.1.2: a plain ViT binary classifier on 64 x 64 crops.

Built from the typed `EvaluatorConfig` on top of the `transformers` ViT encoder (one input
channel, patch 8; the paper preset is width 1024, depth 6, 32 heads, MLP 2048, dropout 0.5 as
in the authors' code). The classification head reads the final-layer-normed [CLS] token, which
is also the penultimate feature vector used for the Frechet distance of `namd evaluate`.

Where the paper is silent: the authors' ViT (lucidrains style) uses 64-dimensional heads, so its
attention width is heads x 64; the transformers ViT splits the width across heads (1024 / 32).
Dropout is applied to hidden states and attention weights, as in the authors' code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from namd.cohort.imaging import hu_to_unit
from namd.config import EvaluatorConfig
from namd.run.checkpoint import load_best
from namd.run.contract import RunFileError
from namd.run.provenance import RUN_INFO
from namd.run.readers import check_safetensors, read_json, reading

MODULE = "vit"  # name of the evaluator's weights in its stage checkpoints


def vit_config(cfg: EvaluatorConfig, image_size: int) -> ViTConfig:
    """The transformers ViT configuration of the evaluator (1 channel, square crops)."""
    if image_size % cfg.patch_size:
        raise ValueError(f"evaluator: crop size {image_size} is not a multiple of the patch size "
                         f"{cfg.patch_size}")
    if cfg.width % cfg.heads:
        raise ValueError(f"evaluator: width {cfg.width} is not divisible by heads {cfg.heads}")
    return ViTConfig(hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                     num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
                     hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                     image_size=image_size, patch_size=cfg.patch_size, num_channels=1)


class MalignancyViT(nn.Module):
    """ViT encoder + linear head giving one malignancy logit per crop."""

    def __init__(self, cfg: EvaluatorConfig, image_size: int):
        super().__init__()
        self.encoder = ViTModel(vit_config(cfg, image_size), add_pooling_layer=False)
        self.head = nn.Linear(cfg.width, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, width): the final-layer-normed [CLS] token."""
        return self.encoder(pixel_values=x).last_hidden_state[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Malignancy logits (B,) of network-range crops (B, 1, H, W)."""
        return self.head(self.features(x)).squeeze(-1)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (1, B): a single ViT is an ensemble of one."""
        return self(x)[None]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and penultimate features (B, width) from one forward pass."""
        f = self.features(x)
        return self.head(f).squeeze(-1), f

    @property
    def feature_dim(self) -> int:
        return self.head.in_features


class EvaluatorEnsemble(nn.Module):
    """`evaluator.members` ViTs of the same recipe, each from its own initial weights, trained
    side by side on the same batches, each on its own loss (so they stay independent draws of
    the recipe); the malignancy logit is their mean and the features their concatenation.

    Why: one small ViT trained on a few hundred labelled crops ranks the test nodules
    differently for every initialisation (real-baseline AUROC spread over training seeds
    about the size of the effects Table 1 compares; benchmarks/results/judge.md). Averaging
    independent members shrinks that spread. The paper preset keeps the paper's single ViT.
    """

    def __init__(self, cfg: EvaluatorConfig, image_size: int):
        super().__init__()
        self.members = nn.ModuleList(MalignancyViT(cfg, image_size) for _ in range(cfg.members))

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits (E, B)."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ensemble's malignancy logits (B,): the members' mean."""
        return self.member_logits(x).mean(0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' penultimate features side by side (B, members x width)."""
        return torch.cat([m.features(x) for m in self.members], dim=-1)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean logits (B,) and concatenated features from one forward pass per member."""
        pairs = [m.logits_and_features(x) for m in self.members]
        return torch.stack([p[0] for p in pairs]).mean(0), torch.cat([p[1] for p in pairs], -1)

    @property
    def feature_dim(self) -> int:
        return sum(m.feature_dim for m in self.members)


Evaluator = MalignancyViT | EvaluatorEnsemble


def build_evaluator(cfg: EvaluatorConfig, image_size: int) -> Evaluator:
    """A randomly initialised evaluator of the configured size: one ViT, or an ensemble of
    `cfg.members` (state-dict keys members.<i>.<the single ViT's keys>)."""
    if cfg.members == 1:
        return MalignancyViT(cfg, image_size)
    return EvaluatorEnsemble(cfg, image_size)


def to_input(hu: np.ndarray | torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """HU crops (B, H, W) -> evaluator input (B, 1, H, W) in [-1, 1] (lung window)."""
    x = torch.as_tensor(np.asarray(hu) if not torch.is_tensor(hu) else hu, dtype=torch.float32)
    return hu_to_unit(x, window).unsqueeze(1)


@torch.no_grad()
def predict(model: Evaluator, hu: np.ndarray, window: tuple[float, float],
            batch_size: int = 256, with_features: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Malignancy probabilities (N,) of HU crops (N, H, W), and optionally features (N, width).

    Runs in eval mode (no dropout) on the model's device, in batches; `hu` may be a memory map.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, feats = [], []
    for start in range(0, len(hu), batch_size):
        x = to_input(np.asarray(hu[start:start + batch_size]), window).to(device)
        logits, f = model.logits_and_features(x)
        probs.append(torch.sigmoid(logits).cpu())
        if with_features:
            feats.append(f.cpu())
    model.train(was_training)
    width = model.feature_dim
    p = torch.cat(probs).double().numpy() if probs else np.zeros(0)
    if not with_features:
        return p, None
    return p, torch.cat(feats).double().numpy() if feats else np.zeros((0, width))


def load_evaluator(stage_dir: Path) -> tuple[Evaluator, tuple[float, float], dict]:
    """The trained evaluator of a run (best validation-AUROC weights), its HU window and its
    run_info; the architecture is rebuilt from the config the stage was trained with. Every
    file is checked first, the weights against the sha256 the stage recorded: RunFileError
    naming the one that is missing or damaged."""
    stage_dir = Path(stage_dir)
    info_path = stage_dir / RUN_INFO
    info = read_json(info_path, "evaluator", keys=("config", "image_size"))
    if not info.get("complete"):
        raise RunFileError(info_path, "the evaluator stage did not finish",
                           f"finish it: `namd train evaluator --run {stage_dir.parent} --resume`")
    with reading(info_path, "evaluator"):
        cfg = EvaluatorConfig.model_validate(info["config"]["evaluator"])
        image_size = int(info["image_size"])
        window = tuple(float(v) for v in info["config"]["data"]["window_hu"])
    best = stage_dir / "checkpoints" / "best"
    read_json(best / "state.json", "evaluator")
    # the trainer exports the EMA weights when the stage kept an EMA (evaluator.train.ema_decay)
    weights = best / f"{'ema_' if cfg.train.ema_decay else ''}{MODULE}.safetensors"
    check_safetensors(weights, "evaluator")
    model = build_evaluator(cfg, image_size)
    with reading(weights, "evaluator"):
        load_best(stage_dir, {MODULE: model})
    model.eval()
    return model, window, info
