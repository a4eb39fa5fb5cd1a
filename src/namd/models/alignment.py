"""The loss terms of the nodule-aligned VAE (paper Equation 6), each a separate function.

    L_VAE = L_rec + lambda_KL L_KL + lambda_LPIPS L_LPIPS + lambda_align L_align + lambda_pred L_pred

L_align (Equations 2-4) matches, row by row, the softmax over pairwise feature distances (P) with
the softmax over pairwise latent distances (Q); L_pred (Equation 5) is a BCE on a linear probe
of the latent. Where the paper is silent the authors' code decides (docs/reference-facts.md,
section 6): mean-pooled latents, sigma_f = 4, sigma_z = 1, logits divided by a temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """L_rec: mean absolute error per pixel (the authors' `use_nll_loss: false` L1)."""
    return (recon - x).abs().mean()


def gradient_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """L_grad (beyond the paper): mean absolute error of the horizontal and vertical finite
    differences, which an L1 on pixels alone lets a small VAE trade for blur (thin vessels)."""
    def diffs(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return img[..., :, 1:] - img[..., :, :-1], img[..., 1:, :] - img[..., :-1, :]

    (xh, xv), (rh, rv) = diffs(x), diffs(recon)
    return 0.5 * ((rh - xh).abs().mean() + (rv - xv).abs().mean())


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_KL: KL(N(mean, exp(logvar)) || N(0, I)) summed over latent elements, averaged over the
    batch (as LDM's and the authors' code do; lambda_KL = 1e-6 is calibrated for this sum)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def project_latents(z: torch.Tensor, projection: str) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, D) vectors for distances: spatial mean (authors' default,
    D = C) or flattening (D = C*h*w)."""
    if projection == "mean":
        return z.flatten(2).mean(2)
    if projection == "flatten":
        return z.flatten(1)
    raise ValueError(f"latent projection must be 'mean' or 'flatten', got {projection!r}")


def standardise_features(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per feature; NaN (missing) stays NaN; a constant feature (std 0) is
    only centred, so it contributes no distance instead of dividing by zero."""
    safe = np.where(np.asarray(std) > 0, std, 1.0)
    return (np.asarray(features, dtype=np.float64) - mean) / safe


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per column, ignoring missing values (0 / 1 if all missing)."""
    f = np.asarray(features, dtype=np.float64)
    known = np.isfinite(f)
    count = known.sum(0)
    mean = np.where(count > 0, np.nansum(np.where(known, f, 0.0), 0) / np.maximum(count, 1), 0.0)
    var = np.where(count > 1, np.nansum(np.where(known, (f - mean) ** 2, 0.0), 0) / np.maximum(count, 1), 1.0)
    return mean, np.sqrt(var)


def _offdiagonal_log_softmax(points: torch.Tensor, sigma: float, temperature: float) -> torch.Tensor:
    """log P_ij (Equation 3) for j != i as a (n, n-1) matrix: logits -||x_j - x_i||^2 /
    (2 sigma^2) / temperature, the diagonal removed before the row-wise softmax."""
    n = points.shape[0]
    diff = points[:, None, :] - points[None, :, :]
    logits = -diff.pow(2).sum(-1) / (2.0 * sigma**2) / temperature
    keep = ~torch.eye(n, dtype=torch.bool, device=points.device)
    return torch.log_softmax(logits[keep].view(n, n - 1), dim=1)


@dataclass
class AlignmentResult:
    """L_align and how many samples entered it (0 or 1 means the loss is 0 by definition)."""

    loss: torch.Tensor
    n_used: int


def alignment_loss(z: torch.Tensor, features: torch.Tensor, sigma_f: float, sigma_z: float,
                   temperature: float = 1.0, projection: str = "mean") -> AlignmentResult:
    """L_align (Equations 2-4): (1/B') sum_i KL(P_i || Q_i) over the B' samples whose features
    are all known (a sample with any missing feature leaves both P and Q).

    `features` (B, T): raw or standardised (`vae.features`; see `standardise_features`), NaN = missing.
    With fewer than two usable samples there is no distribution to match: the loss is an
    exact 0 (still attached to the graph) and `n_used` tells the caller to say so.
    """
    usable = torch.isfinite(features).all(1)
    n = int(usable.sum())
    if n < 2:
        return AlignmentResult(z.sum() * 0.0, n)
    f = features[usable].to(torch.float32)
    zp = project_latents(z[usable], projection).to(torch.float32)
    log_p = _offdiagonal_log_softmax(f, sigma_f, temperature)
    log_q = _offdiagonal_log_softmax(zp, sigma_z, temperature)
    # P log(P/Q) with 0 log 0 = 0: log_p is finite, exp(log_p) may underflow to exactly 0.
    kl_rows = (log_p.exp() * (log_p - log_q)).sum(1)
    return AlignmentResult(kl_rows.mean(), n)


def target_entropy(features: np.ndarray, sigma_f: float, temperature: float, batch_size: int,
                   seed: int, n_batches: int = 50) -> dict[str, float | None]:
    """Mean row entropy of P (Equation 3) over random batches of the complete-feature rows, beside
    ln(B - 1), a uniform row's: how much structure L_align asks of the latent. Near the uniform
    value the target is flat and the loss asks for almost nothing."""
    f = np.asarray(features, dtype=np.float64)
    f = f[np.isfinite(f).all(1)]
    b = min(batch_size, len(f))
    if b < 3:
        return {"entropy": None, "uniform": None, "batch": b}
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_batches):
        pts = torch.from_numpy(f[rng.choice(len(f), size=b, replace=False)])
        log_p = _offdiagonal_log_softmax(pts, sigma_f, temperature)
        rows.append(float(-(log_p.exp() * log_p).sum(1).mean()))
    return {"entropy": float(np.mean(rows)), "uniform": float(np.log(b - 1)), "batch": b}


def class_weights(n_neg: int, n_pos: int, mode: str) -> tuple[float, float] | None:
    """(w_benign, w_malignant) for L_pred from the training split's label counts.

    "balanced": n / (2 n_c) per class, the mean weight over samples is 1, so the BCE keeps the
    scale lambda_pred = 0.2 was set for in the authors' unweighted code; "pos_weight": (1,
    n_neg / n_pos), BCE's pos_weight; "none": unweighted. None when a class is absent.
    """
    if mode == "none" or n_neg == 0 or n_pos == 0:
        return None
    if mode == "balanced":
        n = n_neg + n_pos
        return n / (2 * n_neg), n / (2 * n_pos)
    if mode == "pos_weight":
        return 1.0, n_neg / n_pos
    raise ValueError(f"vae.pred_balance must be balanced, pos_weight or none, got {mode!r}")


def prediction_loss(logits: torch.Tensor, labels: torch.Tensor,
                    weights: tuple[float, float] | None = None) -> tuple[torch.Tensor, int]:
    """L_pred (Equation 5): binary cross-entropy of the probe's logits against the malignancy
    label, averaged over the samples that have one (NaN = no label), each weighted by its
    class's weight (w_benign, w_malignant) against class imbalance; None = plain BCE."""
    logits, labels = logits.reshape(-1), labels.reshape(-1).to(logits.dtype)
    known = torch.isfinite(labels)
    n = int(known.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    y = labels[known]
    per_sample = F.binary_cross_entropy_with_logits(logits[known], y, reduction="none")
    if weights is not None:
        per_sample = per_sample * torch.where(y > 0.5, weights[1], weights[0])
    return per_sample.mean(), n


class PerceptualLoss(torch.nn.Module):
    """L_LPIPS (VGG) from a local safetensors file, never a download (namd.models.lpips)."""

    def __init__(self, weights: str | Path):
        super().__init__()
        from namd.models.lpips import load_lpips

        self.net = load_lpips(weights)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance; 1-channel crops are replicated to the 3 channels LPIPS expects."""
        if x.shape[1] == 1:
            x, recon = x.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)
        return self.net(recon, x).mean()
