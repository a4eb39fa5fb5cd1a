"""The VAE stage's report: how well crops come back, and how well the latent space is aligned.

    recon_mae (HU), recon_psnr (dB), recon_ssim   posterior-mean reconstructions of the split's
                                                  crops against the crops clipped to the window
    distance_spearman    Spearman rho between pairwise latent distances (the alignment's
                         projection) and pairwise standardised nodule-feature distances
    knn_r2_diameter      cross-validated k-NN regression R^2 of SCT_LONG_DIA from the latents
    probe_auroc          AUROC of the stage's linear probe on the split
    linear_probe_auroc   AUROC of a class-balanced logistic regression fitted on the training
                         latents: the same protocol for the aligned VAE and the ablation
    target_entropy       mean row entropy of L_align's target P on the split's features as the
                         loss sees them (raw or standardised), beside a uniform row's ln(B - 1)
`_flat` variants use the flattened latent. Written to STAGE/report.json with tsne.png (the
paper's Figure 2: latents coloured by diameter) and reconstructions.png.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from namd.cohort.ehr import NODULE_FIELDS
from namd.cohort.store import Cohort
from namd.config import NamdConfig
from namd.models.alignment import project_latents, target_entropy
from namd.models.device import resolve_device
from namd.models.probe import load_probe
from namd.models.vae import from_network, load_trained_vae
from namd.models.vae_data import (
    META_FILE,
    CropSource,
    encode_source,
    split_source,
    training_statistics,
)
from namd.run.provenance import atomic_write_bytes, atomic_write_json, progress
from namd.run.readers import read_json

REPORT_FILE = "report.json"
TSNE_FILE = "tsne.png"
GRID_FILE = "reconstructions.png"


def _clean(value: float | None) -> float | None:
    """NaN / infinity -> None (JSON null)."""
    return None if value is None or not math.isfinite(value) else float(value)


def reconstruction_metrics(hu: np.ndarray, recon_hu: np.ndarray, window: tuple[float, float]) -> dict[str, float]:
    """Mean per-crop MAE (HU), PSNR and SSIM (data range = window width) against the window-
    clipped crops (values outside the window cannot be represented by the network)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    lo, hi = window
    ref = np.clip(hu, lo, hi).astype(np.float64)
    rec = np.asarray(recon_hu, dtype=np.float64)
    with np.errstate(divide="ignore"):  # an exact copy has infinite PSNR
        psnr = [peak_signal_noise_ratio(r, x, data_range=hi - lo) for r, x in zip(ref, rec, strict=True)]
    ssim = [structural_similarity(r, x, data_range=hi - lo) for r, x in zip(ref, rec, strict=True)]
    return {"recon_mae": float(np.abs(ref - rec).mean()),
            "recon_psnr": float(np.mean(np.minimum(psnr, 100.0))),  # an exact copy counts as 100 dB
            "recon_ssim": float(np.mean(ssim))}


def distance_spearman(vectors: np.ndarray, features: np.ndarray) -> float | None:
    """Spearman rho between pairwise latent and feature distances over complete-feature rows."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    keep = np.isfinite(features).all(1)
    if keep.sum() < 3:
        return None
    rho = spearmanr(pdist(vectors[keep]), pdist(features[keep])).statistic
    return _clean(float(rho))


def knn_r2(vectors: np.ndarray, target: np.ndarray, k: int, folds: int, seed: int) -> float | None:
    """R^2 of out-of-fold k-NN predictions of `target` (rows with a known target)."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor

    keep = np.isfinite(target)
    n = int(keep.sum())
    if n < 2 * folds or n - math.ceil(n / folds) < k:
        return None
    pred = cross_val_predict(KNeighborsRegressor(n_neighbors=k), vectors[keep], target[keep],
                             cv=KFold(folds, shuffle=True, random_state=seed))
    return _clean(r2_score(target[keep], pred))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC over labelled rows; None when a class is absent."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(labels)
    if len(np.unique(labels[keep])) < 2:
        return None
    return _clean(roc_auc_score(labels[keep].astype(int), scores[keep]))


def linear_probe_auroc(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray,
                       seed: int) -> float | None:
    """AUROC on (x, y) of a class-balanced logistic regression fitted on (train_x, train_y)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    known = np.isfinite(train_y)
    if len(np.unique(train_y[known])) < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                             random_state=seed))
    clf.fit(train_x[known], train_y[known].astype(int))
    return auroc(clf.decision_function(x), y)


def _save_figure(fig: Figure, path: Path) -> None:
    """PNG written atomically (no pyplot, no display)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def tsne_figure(vectors: np.ndarray, diameters: np.ndarray, path: Path, title: str, seed: int) -> None:
    """t-SNE of latents coloured by longest diameter (grey = unknown), as in the paper's Figure 2."""
    from sklearn.manifold import TSNE

    n = len(vectors)
    emb = TSNE(n_components=2, perplexity=float(max(2, min(30, (n - 1) // 3))), init="pca",
               random_state=seed).fit_transform(vectors) if n > 3 else np.zeros((n, 2))
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    known = np.isfinite(diameters)
    ax.scatter(emb[~known, 0], emb[~known, 1], c="lightgrey", s=8, label="diameter unknown")
    points = ax.scatter(emb[known, 0], emb[known, 1], c=diameters[known], cmap="viridis", s=8)
    fig.colorbar(points, ax=ax, label="longest diameter (mm)")
    ax.set(title=title, xticks=[], yticks=[])
    _save_figure(fig, path)


def reconstruction_grid(hu: np.ndarray, recon_hu: np.ndarray, window: tuple[float, float], path: Path) -> None:
    """Crops (top row) above their reconstructions (bottom row), in the lung window."""
    n = len(hu)
    fig = Figure(figsize=(1.3 * max(n, 1), 2.8))
    for i in range(n):
        for row, img in enumerate((hu[i], recon_hu[i])):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_axis_off()
            if i == 0:
                ax.set_title("crop" if row == 0 else "reconstruction", fontsize=7, loc="left")
    _save_figure(fig, path)


@torch.no_grad()
def _reconstruct(vae, source: CropSource, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU crops, HU reconstructions (from the posterior mean) and posterior-mean latents."""
    hu, rec, lat = [], [], []
    window, device = source.window, next(vae.parameters()).device
    for start in progress(range(0, len(source), batch_size), desc="report", unit="batch"):
        idx = np.arange(start, min(start + batch_size, len(source)))
        z = vae.encode(source.batch(idx)["image"].to(device)).latent_dist.mean
        rec.append(from_network(vae.decode(z).sample, window).cpu().numpy())
        hu.append(source.hu(idx))
        lat.append(z.float().cpu().numpy())
    return np.concatenate(hu), np.concatenate(rec), np.concatenate(lat)


def _entropy_keys(entropy: dict[str, float | None]) -> dict[str, float | None]:
    """P's row entropy as flat report.json numbers (the HTML report shows scalars)."""
    return {"target_entropy": entropy["entropy"], "target_entropy_uniform": entropy["uniform"],
            "target_entropy_batch": entropy["batch"]}


@torch.no_grad()
def evaluate(vae, probe, source: CropSource, config: NamdConfig, train_latents: np.ndarray,
             train_labels: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """All report numbers for one split, and the arrays the figures need."""
    cfg, seed = config.vae, config.vae.train.seed
    hu, recon, latents = _reconstruct(vae, source, cfg.train.batch_size)
    z = torch.from_numpy(latents)
    pooled = project_latents(z, cfg.projection).numpy()
    flat = latents.reshape(len(latents), -1)
    diameter = source.raw_features[:, NODULE_FIELDS.index("SCT_LONG_DIA")]
    metrics = reconstruction_metrics(hu, recon, source.window)
    metrics.update(
        distance_spearman=distance_spearman(pooled, source.standardised),
        distance_spearman_flat=distance_spearman(flat, source.standardised),
        **_entropy_keys(target_entropy(source.features, cfg.sigma_f, cfg.temperature,
                                       cfg.train.batch_size, seed)),
        features=cfg.features,
        knn_r2_diameter=knn_r2(pooled, diameter, cfg.report_knn_k, cfg.report_folds, seed),
        knn_r2_diameter_flat=knn_r2(flat, diameter, cfg.report_knn_k, cfg.report_folds, seed),
        probe_auroc=auroc(probe(z).numpy(), source.labels),
        linear_probe_auroc=linear_probe_auroc(train_latents.reshape(len(train_latents), -1), train_labels,
                                              flat, source.labels, seed),
        n_crops=len(source), n_complete_features=int(np.isfinite(source.raw_features).all(1).sum()),
        n_labelled=int(np.isfinite(source.labels).sum()), projection=cfg.projection,
    )
    return metrics, {"hu": hu, "recon": recon, "flat": flat, "diameter": diameter}


def write_report(stage_dir: Path, cohort: Cohort, config: NamdConfig, split: str = "val",
                 train_latents: np.ndarray | None = None, train_labels: np.ndarray | None = None) -> dict:
    """Evaluate a finished VAE stage on `split`; write report.json and the two PNGs."""
    stage_dir = Path(stage_dir)
    vae, scale = load_trained_vae(stage_dir, resolve_device(None))
    probe = load_probe(stage_dir)
    meta_path = stage_dir / META_FILE
    stats = read_json(meta_path, meta_path.parent.name) if meta_path.is_file() else \
        training_statistics(cohort.crops("train"), config.vae.pred_balance)
    source = split_source(cohort, split, config, stats)
    if len(source) == 0:
        raise ValueError(f"{cohort.path}: the {split} split has no crops to report on")
    if train_latents is None or train_labels is None:
        train_src = split_source(cohort, "train", config, stats)
        train_latents = encode_source(vae, train_src, config.vae.train.batch_size, desc="train latents")
        train_labels = train_src.labels
    metrics, arrays = evaluate(vae, probe, source, config, train_latents, train_labels)
    variant = "aligned" if config.vae.align else "w/o L_align"
    report = {"stage": stage_dir.name, "variant": variant, "split": split, "scale_factor": scale,
              "lpips": stats.get("lpips"), "probe": stats.get("probe"), **metrics}
    rng = np.random.default_rng(config.vae.train.seed)
    pick = np.sort(rng.choice(len(source), size=min(config.vae.report_tsne_max, len(source)), replace=False))
    r2 = report["knn_r2_diameter_flat"]
    tsne_figure(arrays["flat"][pick], arrays["diameter"][pick], stage_dir / TSNE_FILE,
                f"{split} latents, {variant} (k-NN R² flat: {'n/a' if r2 is None else f'{r2:.2f}'})",
                config.vae.train.seed)
    grid = np.sort(rng.choice(len(source), size=min(config.vae.report_grid, len(source)), replace=False))
    reconstruction_grid(arrays["hu"][grid], arrays["recon"][grid], source.window, stage_dir / GRID_FILE)
    atomic_write_json(stage_dir / REPORT_FILE, report)
    return report
