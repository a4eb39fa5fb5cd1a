"""The VAE stage's data, shared by its training (namd.training.vae) and its report
(namd.evaluation.vae_report): cohort crops as network batches with their standardised nodule
features and labels, the feature statistics of the training split, and the posterior-mean
latents of a whole source.

It sits below both users so that the report never imports the training stage.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL

from namd.cohort.ehr import NODULE_FIELDS
from namd.cohort.imaging import grey_to_hu
from namd.cohort.store import Cohort
from namd.config import NamdConfig
from namd.models.alignment import class_weights, feature_statistics, standardise_features
from namd.models.vae import to_network
from namd.run.provenance import progress

log = logging.getLogger(__name__)

META_FILE = "alignment.json"


def cohort_hu(cohort: Cohort, indices: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Crops in HU; a `windowed_uint8` cohort (the authors' JPEG format) is mapped back through
    the window (grey 0 -> window low, 255 -> window high), the only reading it allows."""
    images = cohort.images(indices)
    if cohort.meta.get("units", "HU") == "windowed_uint8":
        images = grey_to_hu(images, window)
    return images.astype(np.float32, copy=False)


class CropSource:
    """A BatchSource of cohort crops: network-range images, the nodule features L_align sees
    (the five SCT_* fields of the crop's own row, raw or standardised as `vae.features` says,
    NaN = missing) and labels (NaN = none)."""

    def __init__(self, cohort: Cohort, rows: pd.DataFrame, window: tuple[float, float], channels: int,
                 feature_mean: np.ndarray, feature_std: np.ndarray, scaling: str = "standardised"):
        self.cohort, self.window, self.channels = cohort, window, channels
        self.rows = rows.reset_index(drop=True)
        self.crop_index = self.rows["crop_index"].to_numpy(np.int64)
        self.raw_features = self.rows[list(NODULE_FIELDS)].to_numpy(np.float64)
        # the report's fixed yardstick, whatever the loss sees
        self.standardised = standardise_features(self.raw_features, feature_mean, feature_std).astype(np.float32)
        if scaling not in ("standardised", "raw"):
            raise ValueError(f"vae.features must be 'standardised' or 'raw', got {scaling!r}")
        self.features = self.standardised if scaling == "standardised" else self.raw_features.astype(np.float32)
        self.labels = self.rows["label"].astype("Float64").to_numpy(np.float64, na_value=np.nan)

    def __len__(self) -> int:
        return len(self.rows)

    def hu(self, indices: np.ndarray) -> np.ndarray:
        """HU crops of the given items."""
        return cohort_hu(self.cohort, self.crop_index[np.asarray(indices)], self.window)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """{"image": (B, C, H, W) in [-1, 1], "features": (B, 5), "label": (B,)}."""
        idx = np.asarray(indices)
        return {"image": to_network(self.hu(idx), self.window, self.channels),
                "features": torch.from_numpy(self.features[idx]),
                "label": torch.from_numpy(self.labels[idx].astype(np.float32))}


def split_source(cohort: Cohort, split: str, config: NamdConfig, stats: dict, shuffle_seed: int | None = None) -> CropSource:
    """All crops of one split (every kind) as a CropSource; validation rows are put in a fixed
    random order so the trainer's first `val_batches` batches are a fair sample."""
    rows = cohort.crops(split)
    if shuffle_seed is not None:
        rows = rows.iloc[np.random.default_rng(shuffle_seed).permutation(len(rows))]
    return CropSource(cohort, rows, tuple(config.data.window_hu), config.vae.in_channels,
                      np.asarray(stats["feature_mean"]), np.asarray(stats["feature_std"]),
                      config.vae.features)


def training_statistics(rows: pd.DataFrame, balance: str) -> dict:
    """Feature standardisation and class balance, from the training split only."""
    mean, std = feature_statistics(rows[list(NODULE_FIELDS)].to_numpy(np.float64))
    labels = rows["label"].dropna().astype(int)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    weights = class_weights(n_neg, n_pos, balance)
    if balance != "none" and weights is None:
        log.warning("L_pred: the training split has %d malignant and %d benign labelled crops; "
                    "no class weighting possible", n_pos, n_neg)
    complete = int(np.isfinite(rows[list(NODULE_FIELDS)].to_numpy(np.float64)).all(1).sum())
    return {"feature_fields": list(NODULE_FIELDS), "feature_mean": mean.tolist(), "feature_std": std.tolist(),
            "n_train": len(rows), "n_train_complete_features": complete, "n_pos": n_pos, "n_neg": n_neg,
            "class_weights": weights, "balance": balance}


@torch.no_grad()
def encode_source(vae: AutoencoderKL, source: CropSource, batch_size: int, desc: str = "encode") -> np.ndarray:
    """Posterior-mean latents (N, C, h, w) of every item of a source, in order."""
    vae.eval()
    device = next(vae.parameters()).device
    out = []
    for start in progress(range(0, len(source), batch_size), desc=desc, unit="batch"):
        idx = np.arange(start, min(start + batch_size, len(source)))
        out.append(vae.encode(source.batch(idx)["image"].to(device)).latent_dist.mean.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
