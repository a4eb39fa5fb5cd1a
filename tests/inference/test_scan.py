"""namd.inference.scan.crop_nodule: a model-ready HU crop from a DICOM folder or a NIfTI file."""

import doctest
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import namd.inference.scan
from namd.cohort.ingest.errors import IngestError
from namd.config import load_config
from namd.inference.scan import crop_nodule, crop_nodule_flagged

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "lung-pet-ct-dx-A0002" / "dicom"
# Centre pixel of the tumour box of slice 1-15 (x 108-226, y 253-330; see ATTRIBUTION.md):
# voxel (column 167, row 291.5, slice 1 of the position-sorted series) = LPS world below.
TUMOUR_VOXEL = (167.0, 291.5, 1.0)
TUMOUR_WORLD = (-65.2138671875, -105.7265625, 200.0)


def _sphere_nifti(path: Path, centre_zyx=(6, 20, 24), radius=5.0) -> Path:
    """A (12, 40, 40) NIfTI, 1 x 1 x 2 mm, origin (-20, 10, 50): a +100 HU ball in -900 HU."""
    z, y, x = np.indices((12, 40, 40))
    r = np.sqrt(((z - centre_zyx[0]) * 2.0) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2)
    image = sitk.GetImageFromArray(np.where(r <= radius, 100, -900).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-20.0, 10.0, 50.0))
    sitk.WriteImage(image, str(path))
    return path


def test_real_series_world_and_voxel_give_the_same_crop():
    world = crop_nodule(REAL, TUMOUR_WORLD)
    voxel = crop_nodule(str(REAL), TUMOUR_VOXEL, space="voxel")
    for crop in (world, voxel):
        assert crop.shape == (64, 64) and crop.dtype == np.float32
        assert -1100 <= crop.min() < crop.max() <= 3000
    np.testing.assert_allclose(world, voxel, atol=1e-2)
    assert -150 < world[24:40, 24:40].mean() < 150  # the adenocarcinoma: soft tissue, not lung
    assert world.min() < -800  # lung parenchyma within the 45 mm field of view


def test_real_series_crop_is_not_padded_and_config_sets_its_geometry():
    crop, flags = crop_nodule_flagged(REAL, TUMOUR_WORLD)
    assert flags == []
    config = load_config(overrides=["data.crop_size=32", "data.pixel_spacing_mm=1.4"])
    small = crop_nodule(REAL, TUMOUR_WORLD, crop_size=64, spacing_mm=0.7, config=config)
    assert small.shape == (32, 32)  # the config wins over the arguments
    # 32 pixels at 1.4 mm cover the 64 x 0.7 mm field of view: the same tissue, coarser.
    assert abs(small[12:20, 12:20].mean() - crop[24:40, 24:40].mean()) < 40
    assert crop_nodule(REAL, TUMOUR_WORLD, crop_size=16, spacing_mm=1.0).shape == (16, 16)


def test_centre_outside_the_volume_is_a_one_line_error_naming_it():
    with pytest.raises(IngestError, match=r"coordinate world \(-65\.2, -105\.7, 900\) mm lies "
                                          r"outside the volume along z") as err:
        crop_nodule(REAL, (-65.2, -105.7, 900.0))
    assert "\n" not in str(err.value)
    with pytest.raises(IngestError, match=r"field x/y: coordinate voxel \(9999, 0, 1\) px lies "
                                          r"outside the volume in-plane"):
        crop_nodule(REAL, (9999, 0, 1), space="voxel")


def test_nifti_sphere_is_at_the_centre_of_its_crop(tmp_path):
    path = _sphere_nifti(tmp_path / "ball.nii.gz")
    world = (-20.0 + 24, 10.0 + 20, 50.0 + 6 * 2.0)  # origin + voxel (24, 20, 6) x spacing
    for crop in (crop_nodule(path, world), crop_nodule(path, (24, 20, 6), space="voxel")):
        assert crop.shape == (64, 64) and crop.dtype == np.float32
        assert crop[31:33, 31:33].min() > 50  # the ball's centre (pixels 31, 32 straddle it)
        assert crop[0, 0] < -850  # background (or air padding) at the corner
    # 4 mm (5.7 px) to the patient's left of the ball's centre is still inside it, 8 mm is not.
    shifted = crop_nodule(path, (world[0] + 8.0, world[1], world[2]))
    assert shifted[31:33, 31:33].max() < -850
    assert shifted[31:33, 20:22].min() > 50  # the ball is now 8 mm / 0.7 mm = 11 px to the left


def test_bad_space_or_centre_is_an_error_before_the_scan_is_read(tmp_path):
    missing = tmp_path / "no-such-scan.nii.gz"
    with pytest.raises(IngestError, match=r"field space: unknown coordinate space 'pixel' "
                                          r"\(world or voxel\)"):
        crop_nodule(missing, (1.0, 2.0, 3.0), space="pixel")
    with pytest.raises(IngestError, match=r"field center: centre must be three finite numbers"):
        crop_nodule(missing, (1.0, 2.0))
    with pytest.raises(IngestError, match=r"field center: centre must be three numbers"):
        crop_nodule(missing, ("a", 2.0, 3.0))
    with pytest.raises(ValueError, match="crop_size must be a positive whole number"):
        crop_nodule(missing, (1.0, 2.0, 3.0), crop_size=0)
    with pytest.raises(IngestError, match=r"no-such-scan\.nii\.gz: image file not found"):
        crop_nodule(missing, (1.0, 2.0, 3.0))


def test_docstring_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = doctest.testmod(namd.inference.scan, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
