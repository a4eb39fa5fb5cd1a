"""What the record's context C carries and how much the trained model uses it (issue 18's
diagnosis, measured rather than guessed), for a finished cond stage:

    probe        cross-validated AUROC of a logistic regression predicting malignancy from C
                 (flattened m x D) of the training pairs, beside the `ehr_logistic` baseline's
                 model on the 13 fields: whether C holds the record's malignancy information at all,
                 and how much of it the language model (with its soft prompts) keeps
    sensitivity  per timestep band, the RMS change of the U-Net's output when C is swapped
                 between patients (a derangement), relative to its RMS: how much C steers one
                 denoising step
    sample_shift same seeds, own C against swapped C: the mean absolute difference of the decoded
                 follow-ups (HU), beside the spread between two draws with the own C: how far the
                 samples move when the record changes, in units of their own randomness
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from namd.config import SamplingConfig, validated_update
from namd.evaluation.baseline_use import BANDS
from namd.models.context import ContextCache

BAND_TIMES = tuple((lo + hi) // 2 for lo, hi in BANDS)  # one timestep per band, its middle


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation without fixed points (every patient gets another's C); n >= 2."""
    if n < 2:
        raise ValueError("swapping contexts needs at least two patients")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def cv_auroc(features, labels: np.ndarray, model=None, folds: int = 5, seed: int = 0) -> float | None:
    """Out-of-fold AUROC of `model` (default: a standardised, class-balanced logistic regression
    on flattened features); None when a class has fewer members than folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from namd.evaluation.metrics import auroc

    y = np.asarray(labels).astype(int)
    if min(np.bincount(y, minlength=2)) < folds:
        return None
    if model is None:
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
        features = np.asarray(features, dtype=np.float64).reshape(len(y), -1)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return auroc(y, cross_val_predict(model, features, y, cv=split, method="predict_proba")[:, 1])


def probe(encoder: torch.nn.Module, pairs: pd.DataFrame, seed: int = 0) -> dict:
    """Malignancy AUROC (5-fold) from C and from the record's fields (the `ehr_logistic`
    baseline's model), on the same labelled pairs."""
    from namd.cohort.store import Cohort
    from namd.evaluation.baselines import ehr_model, ehr_table, labels

    y = labels(pairs, "probe pairs")
    with torch.no_grad():
        contexts = ContextCache(encoder)([Cohort.ehr(row) for _, row in pairs.iterrows()])
    return {"n": len(y), "n_malignant": int(y.sum()),
            "auroc_from_context": cv_auroc(contexts.float().cpu().numpy(), y, seed=seed),
            "auroc_from_record_fields": cv_auroc(ehr_table(pairs), y, ehr_model(seed), seed=seed)}


@torch.no_grad()
def sensitivity(unet: torch.nn.Module, baseline: torch.Tensor, context: torch.Tensor,
                seed: int = 0) -> dict[str, float]:
    """Per band (its middle timestep), RMS(out(C) - out(swapped C)) / RMS(out(C)) at random
    noisy latents: a fraction of what one denoising step predicts."""
    from namd.models.schedules import model_output

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(baseline.shape, generator=g)
    other = context[torch.from_numpy(derangement(len(context), seed))]
    out = {}
    for (lo, hi), t in zip(BANDS, BAND_TIMES, strict=True):
        tt = torch.full((len(z),), t)
        own = model_output(unet, z, tt, context, baseline)
        swapped = model_output(unet, z, tt, other, baseline)
        out[f"{lo}-{hi}"] = float((own - swapped).pow(2).mean().sqrt() / own.pow(2).mean().sqrt())
    return out


def sample_shift(sampler, cond, cfg: SamplingConfig, seed: int = 0) -> dict[str, float]:
    """Mean |own C - swapped C| of decoded samples with the same seeds, and the same between
    two draws with the own C (the spread it is measured against), in HU."""
    from namd.inference.sampler import Conditioning

    cfg2 = validated_update(cfg, {"k": 2}, "sampling")
    perm = torch.from_numpy(derangement(len(cond), seed))
    swapped = Conditioning(cond.keys, cond.baseline, cond.context[perm], cond.null)
    own = sampler.decode(sampler.generate(cond, cfg2, show_progress=False).flatten(0, 1))
    moved = sampler.decode(sampler.generate(swapped, cfg2, show_progress=False).flatten(0, 1))
    own, moved = own.reshape(len(cond), 2, *own.shape[1:]), moved.reshape(len(cond), 2, *own.shape[1:])
    shift = float(np.abs(own - moved).mean())
    spread = float(np.abs(own[:, 0] - own[:, 1]).mean())
    return {"swapped_vs_own_hu": shift, "draw_vs_draw_hu": spread,
            "shift_over_spread": shift / spread if spread > 0 else float("nan")}
