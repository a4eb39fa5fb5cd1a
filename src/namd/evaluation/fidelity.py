"""Do the virtual follow-ups follow their own baseline? Measures against two ceilings.

- `vae_copy_baseline`: the baseline encoded and decoded by the run's VAE, scored like a
  generated follow-up. It is what a generator that predicts "no change" could at best produce
  through this VAE, so an AUROC gain over it must come from predicted change, not from copying
  or from the VAE's own smoothing.
- Fidelity of the mean of the K samples: its MAE to the real follow-up (and that MAE relative to
  `vae_copy_baseline`'s), and the share of nodules whose mean of K lies nearer their own real
  follow-up than any other nodule's (and the same share for the VAE copy, its ceiling). Beside
  it, the per-sample MAE and the spread over K (the
  pixel-wise standard deviation across the K samples), so that collapsing the samples'
  diversity cannot pass for fidelity.
All crops are clipped to the lung window first, as in namd.evaluation.quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from namd.run.provenance import progress


def vae_roundtrip(vae_dir: Path, crops_hu: np.ndarray, window: tuple[float, float],
                  batch: int = 16) -> np.ndarray:
    """Crops (N, H, W) in HU passed through the encoder (posterior mean) and decoder of a
    finished VAE stage, back in HU."""
    from namd.inference.sampler import decode_to_hu, encode_hu
    from namd.models.vae import load_trained_vae

    vae, scale = load_trained_vae(vae_dir)
    latents = encode_hu(vae, np.asarray(crops_hu, dtype=np.float32), scale, window, batch)
    return decode_to_hu(vae, latents, scale, window, batch)


def mae_matrix(a: np.ndarray, b: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """MAE (HU) between every crop of `a` (N, H, W) and every crop of `b` (M, H, W): (N, M)."""
    lo, hi = window
    a = np.clip(a, lo, hi).reshape(len(a), -1).astype(np.float32)
    b = np.clip(b, lo, hi).reshape(len(b), -1).astype(np.float32)
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        out[i] = np.abs(b - a[i]).mean(1)
    return out


def nearest_own_share(distances: np.ndarray) -> float:
    """Share of rows i whose smallest distance is to column i (ties count against)."""
    d = np.asarray(distances, dtype=np.float64)
    own = np.diag(d)
    others = np.where(np.eye(len(d), dtype=bool), np.inf, d).min(1)
    return float((own < others).mean())


def fidelity(generated: np.ndarray, real_followup: np.ndarray, vae_copy: np.ndarray,
             window: tuple[float, float]) -> dict:
    """Fidelity block of one generated variant (N, K, H, W) against the real follow-ups (N, H, W)
    and the same nodules' `vae_copy_baseline` crops (N, H, W)."""
    lo, hi = window
    if generated.ndim != 4 or generated.shape[0] != len(real_followup):
        raise ValueError(f"generated crops {generated.shape} do not match {real_followup.shape}")
    clipped = np.clip(generated.astype(np.float32), lo, hi)
    mean_k = clipped.mean(1)
    real = np.clip(real_followup.astype(np.float32), lo, hi)
    own = np.abs(mean_k - real).reshape(len(real), -1).mean(1)
    copy = np.abs(np.clip(vae_copy, lo, hi) - real).reshape(len(real), -1).mean(1)
    per_sample = np.abs(clipped - real[:, None]).reshape(*clipped.shape[:2], -1).mean(2)
    spread = clipped.std(1).reshape(len(real), -1).mean(1) if clipped.shape[1] > 1 else np.zeros(len(real))
    return {"mean_of_k_mae_hu": float(own.mean()), "vae_copy_mae_hu": float(copy.mean()),
            "mean_of_k_mae_to_vae_copy": float(own.mean() / copy.mean()),
            "nearest_own_followup_share": nearest_own_share(mae_matrix(mean_k, real, window)),
            "vae_copy_nearest_own_followup_share": nearest_own_share(mae_matrix(vae_copy, real, window)),
            "per_sample_mae_hu": float(per_sample.mean()),
            "spread_over_k_hu": float(spread.mean()), "k": int(clipped.shape[1]),
            "n": int(len(real))}


def fidelity_blocks(crops_of: dict[str, np.ndarray], real_followup: np.ndarray,
                    vae_copies: dict[str, np.ndarray], window: tuple[float, float]) -> dict:
    """fidelity() for every generated variant; `vae_copies` maps variant -> its VAE's copies."""
    return {name: fidelity(crops, real_followup, vae_copies[name], window)
            for name, crops in progress(crops_of.items(), desc="fidelity", unit="variant")}
