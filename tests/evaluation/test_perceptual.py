"""Perceptual measures of `namd evaluate`: the evaluator feature distance (always), LPIPS and FID
from local safetensors files named in the config, loaded once, and one-line errors for a
missing or damaged file. The networks are test-built with random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from namd.cohort.imaging import hu_to_unit
from namd.config import load_config
from namd.evaluation import evaluate, perceptual, quality
from namd.evaluation.rows import quality_rows
from namd.models.inception import FIDInception
from namd.models.lpips import LPIPSNet

WINDOW = (-1000.0, 400.0)
NARROW = ((4, 4), (6, 6), (8, 8, 8), (8, 8, 8), (8, 8, 8))  # a narrow VGG, LPIPS layout


def _lpips_file(path) -> LPIPSNet:
    """A random narrow LPIPS network saved as lpips.LPIPS(net='vgg').state_dict() would be."""
    torch.manual_seed(0)
    net = LPIPSNet(NARROW)
    for i in range(5):  # lpips' heads are non-negative
        getattr(net, f"lin{i}").model[1].weight.data.abs_()
    save_file(net.state_dict(), str(path))
    return net.eval()


def _inception_file(path) -> FIDInception:
    """A full-size FID Inception with random weights that keep activations alive."""
    torch.manual_seed(1)
    net = FIDInception()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=math.sqrt(2.0 / module.weight[0].numel()))
    save_file(net.state_dict(), str(path))
    return net.eval()


def _crops(n: int = 3, k: int = 2, size: int = 24, seed: int = 0):
    """Real follow-ups (N, H, W) in HU and generated ones (N, K, H, W): run 0 copies the real
    crop, the other runs are different images."""
    rng = np.random.default_rng(seed)
    real = rng.uniform(-1000, 200, size=(n, size, size)).astype(np.float32)
    gen = rng.uniform(-1000, 200, size=(n, k, size, size)).astype(np.float32)
    gen[:, 0] = real
    return real, gen


def _features(n: int = 3, k: int = 2, d: int = 5):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, k, d)), rng.normal(size=(n, d))


def test_evaluator_feature_distance_is_one_minus_cosine():
    real = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    gen = np.stack([np.stack([3 * real[0], -real[0], [0.0, 5.0, 0.0], np.zeros(3)]),
                    np.stack([real[1], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [0.0, 1.0, 1.0]])])
    dist = perceptual.evaluator_feature_distance(gen, real)
    # same direction (any scale) 0, opposite 2, orthogonal 1, no direction 1; 45 degrees
    np.testing.assert_allclose(dist, [[0.0, 2.0, 1.0, 1.0], [0.0, 1.0, 2.0, 1 - math.sqrt(0.5)]],
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"need \(N, K, d\) and \(N, d\)"):
        perceptual.evaluator_feature_distance(gen, real[:1])


def test_status_and_files_come_from_the_config(tmp_path):
    config = load_config("tiny")
    assert perceptual.perceptual_status(config) == {"lpips": perceptual.LPIPS_UNSET,
                                                   "fid": perceptual.FID_UNSET}
    assert perceptual.perceptual_status(None) == perceptual.perceptual_status(config)
    assert perceptual.LPIPS_UNSET.startswith("not computed: eval.lpips_weights is not set")
    assert perceptual.FID_UNSET.startswith("not computed: eval.fid_weights is not set")
    # unset, eval.lpips_weights falls back on the file VAE training uses; set, it wins
    vae = load_config("tiny", overrides=["vae.lpips_weights=/w/vgg.safetensors"])
    assert perceptual.weights_of(vae)["lpips"] == ("/w/vgg.safetensors", "vae.lpips_weights")
    both = load_config("tiny", overrides=["vae.lpips_weights=/w/vgg.safetensors",
                                          "eval.lpips_weights=/w/eval.safetensors",
                                          "eval.fid_weights=/w/fid.safetensors"])
    assert perceptual.weights_of(both) == {"lpips": ("/w/eval.safetensors", "eval.lpips_weights"),
                                           "fid": ("/w/fid.safetensors", "eval.fid_weights")}
    assert perceptual.perceptual_status(both) == {"lpips": None, "fid": None}


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # PSNR of copies: inf
def test_lpips_is_computed_through_evaluation_from_the_configured_file(tmp_path):
    path = tmp_path / "lpips_vgg.safetensors"
    net = _lpips_file(path)
    config = load_config("tiny", overrides=[f"eval.lpips_weights={path}"])
    nets = perceptual.load_networks(config, "cpu", batch=2)  # batches of 2 over N = 3
    assert nets.inception is None and nets.status["fid"] == perceptual.FID_UNSET
    real, gen = _crops()
    feats, real_feats = _features()
    block, per_crop = quality.image_quality(gen, real, np.full(3, 0.7), WINDOW, feats, real_feats,
                                            nets)
    lp = per_crop["lpips"]
    assert lp.shape == (3, 2) and np.all(lp[:, 0] == 0) and np.all(lp[:, 1] > 0)
    assert block["lpips"] == quality.run_summary(lp)
    assert block["lpips_backbone"] == "vgg16 (lpips v0.1 heads)"

    def rgb(hu):
        return hu_to_unit(torch.as_tensor(hu), WINDOW)[:, None].expand(-1, 3, -1, -1)

    with torch.no_grad():
        direct = net(rgb(gen[:, 1]), rgb(real)).numpy()
    np.testing.assert_allclose(lp[:, 1], direct, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # PSNR of copies: inf
def test_fid_is_computed_through_evaluation_from_the_configured_file(tmp_path):
    path = tmp_path / "fid_inception.safetensors"
    _inception_file(path)
    config = load_config("tiny", overrides=[f"eval.fid_weights={path}"])
    nets = perceptual.load_networks(config, "cpu", batch=4)
    assert nets.lpips is None and nets.status["lpips"] == perceptual.LPIPS_UNSET
    real, gen = _crops(size=16)
    feats, real_feats = _features()
    block, _ = quality.image_quality(gen, real, np.full(3, 0.7), WINDOW, feats, real_feats, nets)
    (real_inception,) = nets.real_cache.values()  # computed once, kept for the next row
    assert real_inception.shape == (3, 2048) and real_inception.dtype == np.float64
    assert block["fid_backbone"] == "inception-v3 (pytorch-fid 2015-12-05 weights)"
    # run 0 copies the real crops (FID ~ 0), run 1 does not: mean and std over K both FID_1 / 2
    assert block["fid"] > 0 and block["fid"] == pytest.approx(block["fid_std"], rel=1e-3)


def test_missing_or_damaged_weights_stop_evaluation_in_one_line(tmp_path):
    absent = tmp_path / "absent.safetensors"
    cases = [(["eval.lpips_weights"], FileNotFoundError, "not found"),
             (["vae.lpips_weights"], FileNotFoundError, "not found"),
             (["eval.fid_weights"], FileNotFoundError, "not found")]
    for fields, error, what in cases:
        config = load_config("tiny", overrides=[f"{f}={absent}" for f in fields])
        with pytest.raises(error, match=what) as err:
            perceptual.load_networks(config, "cpu")
        text = str(err.value)
        assert text.startswith(f"{fields[0]}: {absent}") and "\n" not in text
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01" * 30)
    lpips = tmp_path / "lpips_vgg.safetensors"
    _lpips_file(lpips)
    for field, path, what in [("eval.lpips_weights", broken, "not a readable safetensors"),
                              ("eval.fid_weights", broken, "not a readable safetensors"),
                              ("eval.fid_weights", lpips, "does not hold pytorch-fid's InceptionV3")]:
        config = load_config("tiny", overrides=[f"{field}={path}"])
        with pytest.raises(ValueError, match=what) as err:
            perceptual.load_networks(config, "cpu")
        assert str(err.value).startswith(f"{field}: {path}") and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # PSNR of copies: inf
def test_image_quality_blocks_load_the_configured_networks_once(tmp_path, monkeypatch):
    path = tmp_path / "lpips_vgg.safetensors"
    _lpips_file(path)
    config = load_config("tiny", overrides=[f"vae.lpips_weights={path}"])
    loads = []
    real_load = perceptual.load_networks
    monkeypatch.setattr(perceptual, "load_networks",
                        lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    real, gen = _crops()
    feats, real_feats = _features()
    evaluated = quality_rows()[:2]
    inp = evaluate.Inputs(None, np.zeros(3), {"followup": real}, np.full(3, 0.7), None, WINDOW, 4)
    scored = {name: evaluate.Scored(status="not run: test") for name in quality_rows()}
    crops_of = {name: gen for name in evaluated}
    all_feats = {"followup": real_feats[:, None], **{name: feats for name in evaluated}}
    blocks, per_crop = evaluate.image_quality_blocks(inp, scored, all_feats, crops_of, config)
    assert len(loads) == 1 and set(per_crop) == set(evaluated)
    for name in evaluated:
        assert blocks[name]["status"] == "ok" and blocks[name]["lpips"]["n"] == 6
        assert blocks[name]["fid"] == perceptual.FID_UNSET
        assert per_crop[name]["evaluator_feature_distance"].shape == (3, 2)
    assert all(blocks[n] == {"status": "not run: test"} for n in quality_rows() if n not in evaluated)
    plain, _ = evaluate.image_quality_blocks(inp, scored, all_feats, crops_of)  # no config
    assert plain[evaluated[0]]["lpips"] == perceptual.LPIPS_UNSET


def test_the_report_table_shows_the_new_column_and_names_the_backbones():
    from namd.evaluation.report.html import quality_table

    ok = {"status": "ok", "mae_hu": {"mean": 50.0}, "psnr": {"mean": 20.0}, "ssim": {"mean": 0.5},
          "frechet_evaluator": 3.0, "diameter_error_mm": {"mean": 1.0},
          "evaluator_feature_distance": {"mean": 0.125, "std": 0.01},
          "lpips": {"mean": 0.2, "std": 0.02}, "lpips_backbone": perceptual.LPIPS_BACKBONE,
          "fid": 12.5, "fid_std": 1.5, "fid_backbone": perceptual.FID_BACKBONE}
    text = quality_table({"namd": ok})
    assert "evaluator feature distance" in text and "0.125 ± 0.010" in text
    assert "12.5 ± 1.50" in text and 'class="missing"' not in text
    assert "LPIPS: vgg16 (lpips v0.1 heads); FID: inception-v3 (pytorch-fid" in text
    unset = quality_table({"namd": {**ok, "lpips": perceptual.LPIPS_UNSET, "fid": perceptual.FID_UNSET,
                                    "lpips_backbone": None, "fid_backbone": None}})
    assert "eval.lpips_weights is not set" in unset and "vgg16" not in unset
