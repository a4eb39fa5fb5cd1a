"""The latent cache: one encoding per crop and rotation, reused, rebuilt when the VAE changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import namd.training.latents as latents
from namd.cohort.ehr import EHR
from namd.cohort.imaging import ROTATIONS
from namd.cohort.store import CohortWriter
from namd.config import VAEConfig
from namd.models.vae import build_vae, encode, save_trained_vae, to_network
from namd.run.contract import RunFileError

WINDOW = (-1000.0, 400.0)
VAE = VAEConfig(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4)


def _cohort(path, n=5, size=16):
    rng = np.random.default_rng(0)
    writer = CohortWriter(path, crop_size=size, pixel_spacing_mm=0.7, source="test")
    for i in range(n):
        img = rng.normal(-700, 200, (size, size)).astype(np.float32)
        img[4:9, 3:7] = 50.0  # an asymmetric blob: rotations give different crops
        writer.add(img, patient_id=f"p{i}", nodule_id="n", kind="unpaired", split="train",
                   label=None, ehr=EHR())
    return writer.close()


def _vae(folder, seed):
    torch.manual_seed(seed)
    vae = build_vae(VAE).eval()
    save_trained_vae(vae, folder, scale_factor=0.5)
    return vae


def test_cache_holds_every_rotation_and_is_reused(tmp_path, monkeypatch):
    cohort = _cohort(tmp_path / "cohort")
    vae = _vae(tmp_path / "vae", seed=0)
    path = latents.cache_path(tmp_path, "vae")
    store = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW, batch=2)
    assert path.is_file() and store.latents.shape == (len(ROTATIONS), 5, 4, 4, 4)

    from namd.cohort.store import Cohort
    images = Cohort(cohort).images(range(5))
    x = to_network(images, WINDOW, 1)
    with torch.no_grad():
        upright = encode(vae, x)
        turned = encode(vae, torch.rot90(x, 1, dims=(-2, -1)))
    torch.testing.assert_close(store.upright([0, 3]), upright[[0, 3]] * 0.5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(store.all_rotations([1])[:, ROTATIONS.index(90)], turned[[1]] * 0.5,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(store.latents[0], store.latents[ROTATIONS.index(90)])  # not rot-invariant
    assert store.all_rotations([4, 2]).shape == (2, len(ROTATIONS), 4, 4, 4)

    def boom(*a, **k):
        raise AssertionError("re-encoded although the cache is valid")

    monkeypatch.setattr(latents, "encode_cohort", boom)
    again = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW)
    assert torch.equal(again.latents, store.latents) and again.fingerprint == store.fingerprint


def test_cache_is_rebuilt_when_the_vae_changes(tmp_path):
    cohort = _cohort(tmp_path / "cohort")
    _vae(tmp_path / "vae", seed=0)
    path = latents.cache_path(tmp_path, "vae")
    first = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW)
    _vae(tmp_path / "vae", seed=1)  # retrained VAE, same folder
    second = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW)
    assert first.fingerprint != second.fingerprint
    assert not torch.allclose(first.latents, second.latents)
    third = latents.load_or_build(path, cohort, tmp_path / "vae", (-1200.0, 600.0))  # other window
    assert third.fingerprint != second.fingerprint


def test_a_cache_changed_after_it_was_written_is_rebuilt_not_used(tmp_path):
    """A flipped byte in the latents parses; the recorded sha256 of the latents catches it."""
    cohort = _cohort(tmp_path / "cohort")
    _vae(tmp_path / "vae", seed=0)
    path = latents.cache_path(tmp_path, "vae")
    first = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # inside the last latent value
    path.unlink()
    path.write_bytes(bytes(data))
    again = latents.load_or_build(path, cohort, tmp_path / "vae", WINDOW)
    assert torch.equal(again.latents, first.latents)  # encoded anew, not read with the flip


def test_cache_errors(tmp_path):
    cohort = _cohort(tmp_path / "cohort", n=2)
    with pytest.raises(RunFileError, match="latent_scale.json: missing.*`namd train vae"):
        latents.load_or_build(tmp_path / "c.safetensors", cohort, tmp_path / "novae", WINDOW)
    _vae(tmp_path / "vae", seed=0)
    with pytest.raises(ValueError, match="rotation 0"):
        latents.load_or_build(tmp_path / "c.safetensors", cohort, tmp_path / "vae", WINDOW, rotations=(90,))


def test_cache_encodes_only_what_training_and_validation_read(tmp_path):
    """Every rotation of the training split, rotation 0 of the validation split, nothing of the
    test split; a crop that was not encoded is refused, never read as NaN."""
    from namd.training.diffusion import pick_rotation

    rng = np.random.default_rng(1)
    writer = CohortWriter(tmp_path / "cohort", crop_size=16, pixel_spacing_mm=0.7, source="test")
    for i, split in enumerate(("train", "train", "val", "test")):
        writer.add(rng.normal(-700, 200, (16, 16)).astype(np.float32), patient_id=f"p{i}",
                   nodule_id="n", kind="unpaired", split=split, label=None, ehr=EHR())
    cohort = writer.close()
    _vae(tmp_path / "vae", seed=0)
    store = latents.load_or_build(latents.cache_path(tmp_path, "vae"), cohort, tmp_path / "vae", WINDOW)
    encoded = ~torch.isnan(store.latents.flatten(2)[:, :, 0])  # (R, N)
    upright = ROTATIONS.index(0)
    assert encoded[:, :2].all() and encoded[upright, 2] and encoded[:, 2].sum() == 1 and not encoded[:, 3].any()
    assert torch.isfinite(store.upright([0, 1, 2])).all()
    with pytest.raises(ValueError, match="crop 3 is not in the latent cache"):
        store.upright([3])
    val = store.all_rotations([2])  # validation reads slot 0 only
    (z,) = pick_rotation([val], torch.Generator().manual_seed(0), augment=False)
    assert torch.isfinite(z).all()
    with pytest.raises(ValueError, match="augmentation reads the training split alone"):
        pick_rotation([val.repeat(8, 1, 1, 1, 1)], torch.Generator().manual_seed(0), augment=True)
