"""The VAE report's numbers on arrays with known answers, and its figures."""

from __future__ import annotations

import numpy as np
import pytest

from namd.evaluation.vae_report import (
    auroc,
    distance_spearman,
    knn_r2,
    linear_probe_auroc,
    reconstruction_grid,
    reconstruction_metrics,
    tsne_figure,
)

WINDOW = (-1000.0, 400.0)


def test_reconstruction_metrics_in_hu():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 600, size=(4, 16, 16))
    same = reconstruction_metrics(hu, np.clip(hu, *WINDOW), WINDOW)
    assert same["recon_mae"] == 0.0 and same["recon_ssim"] == pytest.approx(1.0)
    assert same["recon_psnr"] == 100.0
    off = reconstruction_metrics(hu, np.clip(hu, *WINDOW) + 14.0, WINDOW)
    assert off["recon_mae"] == pytest.approx(14.0)
    assert off["recon_psnr"] == pytest.approx(20 * np.log10(1400.0 / 14.0), rel=1e-6)  # 40 dB
    assert off["recon_ssim"] < 1.0


def test_distance_spearman_sees_aligned_and_scrambled_latents():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(40, 5))
    f[3, 2] = np.nan
    aligned = f * 0.3 + 5.0
    aligned[3] = 100.0  # a row without features must not count
    assert distance_spearman(np.nan_to_num(aligned), f) == pytest.approx(1.0)
    assert abs(distance_spearman(rng.normal(size=(40, 4)), f)) < 0.2
    assert distance_spearman(rng.normal(size=(2, 4)), f[:2]) is None


def test_knn_r2_of_diameter():
    rng = np.random.default_rng(2)
    diameter = rng.uniform(4, 30, 80)
    informative = np.stack([diameter, rng.normal(size=80)], 1)
    assert knn_r2(informative, diameter, k=5, folds=5, seed=0) > 0.9
    assert knn_r2(rng.normal(size=(80, 2)), diameter, k=5, folds=5, seed=0) < 0.2
    diameter[:10] = np.nan  # unknown targets are left out, not imputed
    assert knn_r2(informative, diameter, k=5, folds=5, seed=0) > 0.9
    assert knn_r2(informative[:6], diameter[10:16], k=5, folds=5, seed=0) is None


def test_auroc_and_linear_probe():
    y = np.array([0, 0, 1, 1, np.nan])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9, 0.0]), y) == 1.0
    assert auroc(np.array([0.1, 0.2]), np.array([1.0, 1.0])) is None
    rng = np.random.default_rng(3)
    labels = (rng.random(200) < 0.3).astype(float)
    x = rng.normal(size=(200, 6)) + labels[:, None] * 1.5
    assert linear_probe_auroc(x[:150], labels[:150], x[150:], labels[150:], seed=0) > 0.85


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(4)
    d = rng.uniform(4, 30, 30)
    d[0] = np.nan
    tsne_figure(rng.normal(size=(30, 16)), d, tmp_path / "tsne.png", "t", seed=0)
    hu = rng.uniform(-1000, 400, size=(3, 16, 16))
    reconstruction_grid(hu, hu, WINDOW, tmp_path / "grid.png")
    for name in ("tsne.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
