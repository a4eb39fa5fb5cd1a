"""Image-quality measures: MAE / PSNR / SSIM, Frechet distance, nodule diameter, and the
perceptual part of the block (evaluator feature distance, LPIPS, FID; networks in test_perceptual)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from namd.evaluation import perceptual, quality

WINDOW = (-1000.0, 400.0)


def _nodule(radius_y: float, radius_x: float, centre=(31.5, 31.5), size: int = 64,
            noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Lung background (-850 HU) with an elliptical solid nodule (0 HU)."""
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - centre[0]) / radius_y) ** 2 + ((xx - centre[1]) / radius_x) ** 2 <= 1
    crop = np.where(inside, 0.0, -850.0)
    return crop + np.random.default_rng(seed).normal(scale=noise, size=crop.shape)


def test_crop_errors_known_values():
    real = np.stack([_nodule(6, 6), _nodule(9, 5)])
    gen = np.stack([real, real + 100.0], axis=1)  # (N=2, K=2): exact copy, then +100 HU
    out = quality.crop_errors(gen, real, WINDOW)
    assert out["mae_hu"].shape == (2, 2)
    np.testing.assert_allclose(out["mae_hu"][:, 0], 0.0)
    np.testing.assert_allclose(out["mae_hu"][:, 1], 100.0)
    assert np.isinf(out["psnr"][:, 0]).all()
    np.testing.assert_allclose(out["psnr"][:, 1], 20 * np.log10(1400 / 100))
    np.testing.assert_allclose(out["ssim"][:, 0], 1.0)
    assert (out["ssim"][:, 1] < 1.0).all()


def test_crop_errors_clip_to_the_window_and_check_shapes():
    real = _nodule(6, 6)[None]
    bright = np.where(real > -100, 3000.0, real)[:, None]  # bone-like values beyond the window
    assert quality.crop_errors(bright, real, WINDOW)["mae_hu"][0, 0] == pytest.approx(
        np.mean(np.where(real[0] > -100, 400.0, 0.0)))
    with pytest.raises(ValueError, match="do not match"):
        quality.crop_errors(np.zeros((2, 1, 64, 64)), np.zeros((3, 64, 64)), WINDOW)


def test_run_summary_std_is_over_runs():
    values = np.array([[1.0, 3.0], [1.0, 3.0]])  # run means 1 and 3
    s = quality.run_summary(values)
    assert s == {"mean": 2.0, "std": 1.0, "median": 2.0, "n": 4}


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    assert quality.frechet_distance(a, rng.normal(size=(20000, 3))) < 0.01
    shifted = rng.normal(size=(20000, 3)) + np.array([1.0, 2.0, 0.0])
    assert quality.frechet_distance(a, shifted) == pytest.approx(5.0, abs=0.1)  # ||mu||^2
    wide = 2.0 * rng.normal(size=(20000, 3))
    assert quality.frechet_distance(a, wide) == pytest.approx(3.0, abs=0.15)  # d (1 + 4 - 2 * 2)
    # the eigenvalue form equals the textbook formula with scipy's sqrtm
    x, z = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6)) + 0.3
    cx, cz = np.cov(x, rowvar=False), np.cov(z, rowvar=False)
    diff = x.mean(0) - z.mean(0)
    textbook = diff @ diff + np.trace(cx + cz - 2 * np.real(linalg.sqrtm(cx @ cz)))
    assert quality.frechet_distance(x, z) == pytest.approx(textbook, rel=1e-8)
    # fewer samples than dimensions: singular covariances still give a finite distance
    assert np.isfinite(quality.frechet_distance(rng.normal(size=(5, 16)), rng.normal(size=(6, 16))))
    with pytest.raises(ValueError, match="equal d"):
        quality.frechet_distance(a, rng.normal(size=(10, 4)))


def _variant(seed: int = 0):
    rng = np.random.default_rng(seed)
    real = np.stack([_nodule(r, r, noise=20, seed=r) for r in (4, 6, 8, 10)])
    gen = np.stack([np.stack([_nodule(r + 1, r + 1, noise=20, seed=10 * r + k) for k in range(3)])
                    for r in (4, 6, 8, 10)])
    return real, gen, rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 5))


def test_image_quality_block_without_weight_files_says_why_lpips_and_fid_are_missing():
    real, gen, feats, real_feats = _variant()
    block, per_crop = quality.image_quality(gen, real, np.full(4, 0.7), WINDOW, feats, real_feats)
    assert block["lpips"] == perceptual.LPIPS_UNSET and "eval.lpips_weights is not set" in block["lpips"]
    assert block["fid"] == perceptual.FID_UNSET and "eval.fid_weights is not set" in block["fid"]
    assert not {"lpips_backbone", "fid_backbone", "fid_std"} & set(block) and "lpips" not in per_crop
    assert block["mae_hu"]["n"] == 12 and block["ssim"]["mean"] < 1.0
    # generated nodules are one pixel larger in radius: 2 px x 0.7 mm larger in diameter
    assert block["diameter_error_mm"]["mean"] == pytest.approx(1.4, abs=0.5)
    assert block["frechet_evaluator"] >= 0 and "frechet_evaluator_std" in block
    assert per_crop["diameter_error_mm"].shape == (4, 3)


def test_the_evaluator_feature_distance_is_always_in_the_block():
    real, gen, feats, real_feats = _variant()
    block, per_crop = quality.image_quality(gen, real, np.full(4, 0.7), WINDOW, feats, real_feats)
    expected = perceptual.evaluator_feature_distance(feats, real_feats)
    np.testing.assert_allclose(per_crop["evaluator_feature_distance"], expected)
    assert block["evaluator_feature_distance"] == quality.run_summary(expected)
    assert 0.2 < block["evaluator_feature_distance"]["mean"] < 1.8  # random features: near 1
    same, _ = quality.image_quality(gen, real, np.full(4, 0.7), WINDOW,
                                    np.repeat(real_feats[:, None], 3, axis=1), real_feats)
    assert same["evaluator_feature_distance"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_image_quality_uses_lpips_when_its_network_is_loaded(monkeypatch):
    nets = perceptual.PerceptualNets({"lpips": None, "fid": perceptual.FID_UNSET}, lpips=object())
    monkeypatch.setattr(perceptual, "lpips_distances",
                        lambda nets, g, r, w: np.full(g.shape[:2], 0.25))
    real, gen, feats, real_feats = _variant()
    block, per_crop = quality.image_quality(gen, real, np.full(4, 0.7), WINDOW, feats, real_feats,
                                            nets)
    assert block["lpips"]["mean"] == pytest.approx(0.25) and block["lpips"]["n"] == 12
    assert block["lpips_backbone"] == "vgg16 (lpips v0.1 heads)"
    assert per_crop["lpips"].shape == (4, 3) and block["fid"] == perceptual.FID_UNSET


def test_fid_is_reported_as_mean_and_std_over_the_k_runs(monkeypatch):
    """Table 1 gives FID as mean +- std over the K runs: both come from the K per-run FIDs, each
    against the real follow-ups' features, which are computed once for every row."""
    nets = perceptual.PerceptualNets({"lpips": perceptual.LPIPS_UNSET, "fid": None},
                                     inception=object())
    calls = []

    def features(nets, crops, window):  # a stand-in Inception: generated run j shifted by j
        calls.append(len(crops))
        out = np.random.default_rng(len(calls)).normal(size=(len(crops), 3))
        if len(crops) == 12:  # the N x K generated crops, flattened with k fastest
            out += np.tile(np.arange(1.0, 4.0), 4)[:, None]
        return out

    monkeypatch.setattr(perceptual, "inception_features", features)
    real, gen, feats, real_feats = _variant()
    block, _ = quality.image_quality(gen, real, np.full(4, 0.7), WINDOW, feats, real_feats, nets)
    assert block["fid_std"] > 0.5  # runs shifted by 1, 2, 3 from the reference: FIDs far apart
    assert block["fid"] > block["fid_std"]
    assert block["fid_backbone"] == "inception-v3 (pytorch-fid 2015-12-05 weights)"
    quality.image_quality(gen, real, np.full(4, 0.7), WINDOW, feats, real_feats, nets)
    assert calls == [12, 4, 12]  # the real follow-ups' features: once
