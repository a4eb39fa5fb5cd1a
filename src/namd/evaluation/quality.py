"""Image quality of generated follow-ups against the real follow-up crop (paper 4.1.2).

Weight-free measures, always computed:
- MAE (HU), PSNR and SSIM per crop (scikit-image), both crops clipped to the lung window first
  so that values the networks cannot represent do not dominate; data range = window width.
- A Frechet distance between the evaluator's penultimate features of the generated and the real
  follow-up crops (the FID formula on the project's own network; per sample run, then averaged;
  the reference statistics are those of the real follow-ups).
- The nodule's diameter: the longest diameter of `namd.evaluation.measure` (the major axis of
  the equal-moment ellipse of the nodule segmented at the crop centre), in mm; its absolute
  error against the real follow-up's diameter measured the same way.
The perceptual measures come from `namd.evaluation.perceptual`: the evaluator feature distance
(always), LPIPS (VGG-16, `eval.lpips_weights` or `vae.lpips_weights`) and FID (pytorch-fid's
Inception-v3, `eval.fid_weights`) from local safetensors files, never downloaded; without a file
the value is "not computed: <reason>".
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from namd.evaluation import perceptual
from namd.evaluation.measure import measure


def crop_errors(generated: np.ndarray, real: np.ndarray,
                window: tuple[float, float]) -> dict[str, np.ndarray]:
    """MAE (HU), PSNR (dB) and SSIM of generated crops (N, K, H, W) against real ones (N, H, W);
    each returned array is (N, K)."""
    if generated.ndim != 4 or generated.shape[0] != real.shape[0] or generated.shape[2:] != real.shape[1:]:
        raise ValueError(f"generated crops {generated.shape} do not match real crops {real.shape}")
    lo, hi = window
    n, k = generated.shape[:2]
    out = {name: np.empty((n, k)) for name in ("mae_hu", "psnr", "ssim")}
    for i in range(n):
        ref = np.clip(real[i].astype(np.float64), lo, hi)
        for j in range(k):
            img = np.clip(np.asarray(generated[i, j], dtype=np.float64), lo, hi)
            out["mae_hu"][i, j] = np.abs(img - ref).mean()
            with np.errstate(divide="ignore"):
                out["psnr"][i, j] = peak_signal_noise_ratio(ref, img, data_range=hi - lo)
            out["ssim"][i, j] = structural_similarity(ref, img, data_range=hi - lo)
    return out


def run_summary(values: np.ndarray) -> dict[str, float]:
    """Summary of a per-crop measure (N, K): mean over all crops, std over the K run means
    (as the paper's +-), median over all crops, and the number of crops."""
    values = np.asarray(values, dtype=np.float64)
    run_means = values.mean(axis=0)
    return {"mean": float(values.mean()), "std": float(run_means.std()),
            "median": float(np.median(values)), "n": int(values.size)}


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative round-off eigenvalues -> 0)."""
    w, v = linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, covariance and the covariance's square root of a feature set (n, d)."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"feature set {features.shape}: need (n>=2, d)")
    cov = np.atleast_2d(np.cov(features, rowvar=False))
    return features.mean(axis=0), cov, _psd_sqrt(cov)


def frechet_to_reference(reference: tuple[np.ndarray, np.ndarray, np.ndarray],
                         features: np.ndarray) -> float:
    """Frechet distance between a reference (gaussian_stats) and a feature set (n, d).

    ||mu_r - mu||^2 + Tr(S_r) + Tr(S) - 2 Tr((S_r S)^(1/2)), the FID formula. The trace of the
    matrix square root is taken as the sum of square roots of the eigenvalues of the symmetric
    R S R (R = S_r^(1/2)), which has the same non-zero spectrum as S_r S: identical to
    scipy.linalg.sqrtm on S_r S (tested), an order of magnitude faster for d = 1024, and
    well defined for the rank-deficient covariances of small test sets.
    """
    mu_r, cov_r, root_r = reference
    if features.ndim != 2 or features.shape[1] != len(mu_r) or len(features) < 2:
        raise ValueError(f"feature set {features.shape}: need (n>=2, d) with equal d = {len(mu_r)}")
    mu, cov = features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))
    eig = linalg.eigvalsh(root_r @ cov @ root_r)
    trace_root = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_r - mu
    return float(max(0.0, diff @ diff + np.trace(cov_r) + np.trace(cov) - 2.0 * trace_root))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (n, d) and (m, d)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets {a.shape} and {b.shape}: need (n>=2, d) with equal d")
    return frechet_to_reference(gaussian_stats(a), b)


def perceptual_block(measured: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """The perceptual part of an image_quality block, and its per-crop arrays, from
    perceptual.perceptual_measures: the evaluator feature distance and LPIPS as run summaries
    (like mae_hu), FID per sample run against the real follow-ups' Inception statistics, then
    mean and std over the K runs (Table 1's mean +- std); a measure without weights keeps its
    "not computed" string."""
    dist = measured["evaluator_feature_distance"]
    block: dict = {"evaluator_feature_distance": run_summary(dist)}
    per_crop = {"evaluator_feature_distance": dist}
    if isinstance(measured["lpips"], str):
        block["lpips"] = measured["lpips"]
    else:
        block["lpips"], per_crop["lpips"] = run_summary(measured["lpips"]), measured["lpips"]
        block["lpips_backbone"] = perceptual.LPIPS_BACKBONE
    if isinstance(measured["inception"], str):
        block["fid"] = measured["inception"]
        return block, per_crop
    generated, real = measured["inception"]
    reference = gaussian_stats(real)
    fid = np.array([frechet_to_reference(reference, generated[:, j])
                    for j in range(generated.shape[1])])
    block["fid"], block["fid_std"] = float(fid.mean()), float(fid.std())
    block["fid_backbone"] = perceptual.FID_BACKBONE
    return block, per_crop


def image_quality(generated: np.ndarray, real: np.ndarray, spacing_mm: np.ndarray,
                  window: tuple[float, float], features: np.ndarray,
                  real_features: np.ndarray, nets: perceptual.PerceptualNets | None = None,
                  diameters: tuple[np.ndarray, np.ndarray] | None = None,
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    """All image-quality measures of one generated variant (N, K, H, W) vs real (N, H, W).

    `features` (N, K, d) are the evaluator features of the generated crops, `real_features`
    (N, d) those of the real follow-ups; `nets` the LPIPS / FID networks loaded once per
    evaluation (perceptual.load_networks; None: neither is computed); `diameters` the longest
    diameters (N, K) and (N,) of the generated and real crops when already measured (namd
    evaluate measures every crop once), else they are measured here. Returns the metrics.json
    block and per-crop arrays.
    """
    errors = crop_errors(generated, real, window)
    block: dict = {name: run_summary(v) for name, v in errors.items()}
    k = generated.shape[1]
    reference = gaussian_stats(real_features)
    fd = np.array([frechet_to_reference(reference, features[:, j]) for j in range(k)])
    block["frechet_evaluator"] = float(fd.mean())
    block["frechet_evaluator_std"] = float(fd.std())
    gen_d, real_d = diameters or (measure(generated, spacing_mm).longest_mm,
                                  measure(real, spacing_mm).longest_mm)
    err_d = np.abs(gen_d - real_d[:, None])
    block["diameter_error_mm"] = run_summary(err_d)
    block["diameter_mm"] = {"generated_mean": float(gen_d.mean()),
                            "real_followup_mean": float(real_d.mean())}
    perceptual_part, perceptual_crops = perceptual_block(perceptual.perceptual_measures(
        generated, real, window, features, real_features, nets))
    block.update(perceptual_part)
    return block, {**errors, "diameter_mm": gen_d, "diameter_error_mm": err_d, **perceptual_crops}
