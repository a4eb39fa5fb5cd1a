"""Loss terms of Equation 6: L_align against a loop-based Equations 2-4, edge cases, L_pred,
L_KL, L_rec, feature standardisation and the LPIPS hook's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import save_file

from namd.models.alignment import (
    PerceptualLoss,
    alignment_loss,
    class_weights,
    feature_statistics,
    gradient_loss,
    kl_loss,
    prediction_loss,
    project_latents,
    reconstruction_loss,
    standardise_features,
    target_entropy,
)


def reference_alignment(z: np.ndarray, f: np.ndarray, sigma_f: float, sigma_z: float,
                        temperature: float, projection: str) -> float:
    """Equations 2-4 written out with loops in float64 over the rows with complete features."""
    rows = [i for i in range(len(f)) if all(math.isfinite(v) for v in f[i])]
    vec = [z[i].mean(axis=(1, 2)) if projection == "mean" else z[i].reshape(-1) for i in rows]
    feat = [f[i] for i in rows]
    n = len(rows)
    if n < 2:
        return 0.0

    def row_distribution(points, sigma, i):
        logits = {j: -sum((points[j][d] - points[i][d]) ** 2 for d in range(len(points[i])))
                  / (2 * sigma**2) / temperature for j in range(n) if j != i}
        top = max(logits.values())
        norm = sum(math.exp(v - top) for v in logits.values())
        return {j: (v - top) - math.log(norm) for j, v in logits.items()}  # log P_ij

    total = 0.0
    for i in range(n):
        log_p, log_q = row_distribution(feat, sigma_f, i), row_distribution(vec, sigma_z, i)
        total += sum(math.exp(log_p[j]) * (log_p[j] - log_q[j]) for j in log_p)
    return total / n


def _inputs(b: int = 7, seed: int = 0, missing: tuple[int, ...] = (2, 5)):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, 4, 3, 3))
    f = rng.normal(size=(b, 5))
    for i in missing:
        f[i, i % 5] = np.nan
    return z, f


@pytest.mark.parametrize("projection", ["mean", "flatten"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_alignment_matches_loop_reference(projection, temperature):
    z, f = _inputs()
    got = alignment_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(f, dtype=torch.float32),
                         sigma_f=4.0, sigma_z=1.0, temperature=temperature, projection=projection)
    want = reference_alignment(z, f, 4.0, 1.0, temperature, projection)
    assert got.n_used == 5
    assert float(got.loss) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert want > 0.01  # a non-trivial case


def _raw_features(b: int, seed: int) -> np.ndarray:
    """NLST-like raw SCT_* rows: attenuation code, lobe code, long and perpendicular mm, margin code."""
    rng = np.random.default_rng(seed)
    long = rng.uniform(4, 30, b)
    return np.column_stack([rng.choice([1, 2, 3], b), rng.choice([1, 2, 3, 4, 5, 6], b), long,
                            long * rng.uniform(0.5, 1.0, b), rng.choice([1, 2, 3], b)]).astype(float)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_alignment_on_raw_features_matches_loop_reference(temperature):
    """The authors feed raw codes and millimetres (vae.features = raw): the same equations hold at
    that scale, where P is sharply peaked and the loss is large."""
    z = np.random.default_rng(3).normal(size=(9, 4, 3, 3))
    f = _raw_features(9, seed=4)
    f[6, 2] = np.nan
    got = alignment_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(f, dtype=torch.float32),
                         sigma_f=4.0, sigma_z=1.0, temperature=temperature, projection="mean")
    want = reference_alignment(z, f, 4.0, 1.0, temperature, "mean")
    assert got.n_used == 8
    assert float(got.loss) == pytest.approx(want, rel=1e-4)
    standardised = alignment_loss(torch.tensor(z, dtype=torch.float32),
                                  torch.tensor(standardise_features(f, *feature_statistics(f)), dtype=torch.float32),
                                  4.0, 1.0, temperature, "mean")
    assert float(got.loss) > float(standardised.loss)  # a peaked target asks for more


def test_target_entropy_is_near_uniform_for_standardised_features_and_lower_raw():
    f = _raw_features(400, seed=5)
    raw = target_entropy(f, 4.0, 0.5, batch_size=64, seed=0)
    std = target_entropy(standardise_features(f, *feature_statistics(f)), 4.0, 0.5, batch_size=64, seed=0)
    assert raw["uniform"] == std["uniform"] == pytest.approx(math.log(63))
    assert std["entropy"] > 0.95 * std["uniform"]  # the finding: almost flat
    assert raw["entropy"] < std["entropy"] - 0.3
    # the value is a softmax row's entropy: a batch with identical features is exactly uniform
    flat = target_entropy(np.ones((80, 5)), 4.0, 0.5, batch_size=16, seed=0)
    assert flat["entropy"] == pytest.approx(math.log(15))
    assert target_entropy(f[:2], 4.0, 0.5, 64, 0)["entropy"] is None


def test_alignment_is_zero_when_latent_distances_copy_feature_distances():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(6, 4)) * 4.0
    z = np.broadcast_to((f * (1.0 / 4.0))[:, :, None, None], (6, 4, 2, 2)).copy()  # l^z == l^f
    got = alignment_loss(torch.tensor(z), torch.tensor(f), sigma_f=4.0, sigma_z=1.0, temperature=0.5)
    assert float(got.loss) == pytest.approx(0.0, abs=1e-6)
    shuffled = alignment_loss(torch.tensor(z[::-1].copy()), torch.tensor(f), 4.0, 1.0, 0.5)
    assert float(shuffled.loss) > 0.01


def test_alignment_edge_cases_are_finite_and_correct():
    z, f = _inputs(b=2, missing=())
    two = alignment_loss(torch.tensor(z), torch.tensor(f), 4.0, 1.0, 0.5)
    assert two.n_used == 2 and float(two.loss) == pytest.approx(0.0, abs=1e-7)  # one neighbour: P = Q = 1

    z, _ = _inputs(b=6, missing=())
    same = np.ones((6, 5))
    got = alignment_loss(torch.tensor(z), torch.tensor(same), 4.0, 1.0, 0.5)
    assert math.isfinite(float(got.loss))
    assert float(got.loss) == pytest.approx(reference_alignment(z, same, 4.0, 1.0, 0.5, "mean"), rel=1e-5)

    z, f = _inputs(b=6, missing=())
    zt = torch.tensor(z * 1e3, requires_grad=True)
    huge = alignment_loss(zt, torch.tensor(f * 1e4), 4.0, 1.0, 0.5)
    huge.loss.backward()
    assert math.isfinite(float(huge.loss.detach())) and torch.isfinite(zt.grad).all()
    assert float(huge.loss.detach()) == pytest.approx(reference_alignment(z * 1e3, f * 1e4, 4.0, 1.0, 0.5, "mean"),
                                             rel=1e-3)


@pytest.mark.parametrize("missing", [(0, 1, 2), (0, 1, 2, 3)])
def test_alignment_with_fewer_than_two_usable_samples_is_zero_and_counted(missing):
    z, f = _inputs(b=4, missing=missing)
    zt = torch.tensor(z, requires_grad=True)
    got = alignment_loss(zt, torch.tensor(f), 4.0, 1.0, 0.5)
    assert got.n_used == 4 - len(missing) and float(got.loss.detach()) == 0.0
    got.loss.backward()  # still attached to the graph, with zero gradient
    assert torch.equal(zt.grad, torch.zeros_like(zt))


def test_missing_samples_leave_both_p_and_q():
    z, f = _inputs(b=6, missing=(1,))
    full = alignment_loss(torch.tensor(z), torch.tensor(f), 4.0, 1.0, 0.5)
    kept = [0, 2, 3, 4, 5]
    alone = alignment_loss(torch.tensor(z[kept]), torch.tensor(f[kept]), 4.0, 1.0, 0.5)
    assert float(full.loss) == pytest.approx(float(alone.loss), rel=1e-6)
    z2 = z.copy()
    z2[1] += 100.0  # moving the masked sample's latent changes nothing
    moved = alignment_loss(torch.tensor(z2), torch.tensor(f), 4.0, 1.0, 0.5)
    assert float(moved.loss) == pytest.approx(float(full.loss), rel=1e-6)


def test_projection_shapes_and_unknown_projection():
    z = torch.randn(3, 4, 8, 8)
    assert project_latents(z, "mean").shape == (3, 4)
    assert project_latents(z, "flatten").shape == (3, 256)
    with pytest.raises(ValueError, match="projection"):
        project_latents(z, "max")


def test_feature_standardisation_ignores_missing_values():
    f = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 2.0], [5.0, 7.0, 2.0]])
    mean, std = feature_statistics(f)
    np.testing.assert_allclose(mean, [3.0, 6.0, 2.0])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0, 0.0])
    out = standardise_features(f, mean, std)
    np.testing.assert_allclose(out[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert np.isnan(out[1, 1]) and np.all(out[:, 2] == 0.0)  # constant column: centred only


def test_prediction_loss_masks_unlabelled_and_weights_classes():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    labels = torch.tensor([1.0, 0.0, float("nan"), 0.0])
    loss, n = prediction_loss(logits, labels, (0.5, 3.0))
    p = torch.sigmoid(torch.tensor([2.0, -1.0, 3.0]))
    want = -(3.0 * torch.log(p[0]) + 0.5 * torch.log(1 - p[1]) + 0.5 * torch.log(1 - p[2])) / 3
    assert n == 3 and float(loss) == pytest.approx(float(want), rel=1e-6)
    plain, _ = prediction_loss(logits, labels, None)
    builtin = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 1, 3]], labels[[0, 1, 3]])
    assert float(plain) == pytest.approx(float(builtin), rel=1e-6)
    none, n0 = prediction_loss(logits, torch.full((4,), float("nan")), (0.5, 3.0))
    assert n0 == 0 and float(none) == 0.0


def test_class_weights():
    w_neg, w_pos = class_weights(n_neg=90, n_pos=10, mode="balanced")
    assert (w_neg, w_pos) == pytest.approx((100 / 180, 100 / 20))
    assert (90 * w_neg + 10 * w_pos) / 100 == pytest.approx(1.0)  # mean weight 1: the BCE keeps its scale
    assert class_weights(90, 10, "pos_weight") == (1.0, 9.0)
    assert class_weights(90, 10, "none") is None and class_weights(90, 0, "balanced") is None


def test_kl_and_reconstruction_terms():
    params = torch.randn(5, 8, 4, 4)
    dist = DiagonalGaussianDistribution(params)
    assert float(kl_loss(dist.mean, dist.logvar)) == pytest.approx(float(dist.kl().mean()), rel=1e-5)
    assert float(kl_loss(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2))) == 0.0
    x, y = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.25)
    assert float(reconstruction_loss(x, y)) == pytest.approx(0.25)
    assert float(gradient_loss(x, y)) == 0.0  # a constant offset has no edges to lose
    line = torch.zeros(1, 1, 4, 4)
    line[..., 1] = 1.0  # a one-pixel vessel; its blurred copy has the same mean but weaker edges
    blur = torch.nn.functional.avg_pool2d(line, 3, 1, 1, count_include_pad=False)
    assert float(gradient_loss(line, blur)) > 0.2 and float(gradient_loss(line, line)) == 0.0


def test_lpips_hook_refuses_missing_pickled_or_unusable_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips_weights"):
        PerceptualLoss(tmp_path / "absent.safetensors")
    pickled = tmp_path / "vgg.pth"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match="unpickled"):
        PerceptualLoss(pickled)
    weights = tmp_path / "lpips.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    with pytest.raises(ValueError, match="no VGG-layout LPIPS weights"):
        PerceptualLoss(weights)
