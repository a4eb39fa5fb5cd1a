"""Volumes: HU values and geometry from DICOM, NIfTI, MHA and MHD+RAW."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from namd.cohort.ingest.errors import IngestError
from namd.cohort.ingest.volume import DicomVolume, ImageVolume, open_volume


def test_real_series_hu_and_affine(real_series):
    vol = open_volume(real_series)
    assert isinstance(vol, DicomVolume) and vol.size == (512, 512, 3)
    np.testing.assert_allclose(vol.spacing, [0.646484375, 0.646484375, 8.0])
    np.testing.assert_allclose(vol.origin, [-173.1767578125, -294.1767578125, 192.0])
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.slice_of_instance(15) == 1
    # HU = stored x slope + intercept: compare with pydicom's own modality LUT.
    ds = pydicom.dcmread(real_series / "1-15.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    got = sitk.GetArrayFromImage(vol.slice_image(1))[0]
    np.testing.assert_array_equal(got, expected)
    assert got.min() == -1024 and got.max() > 1000
    # The voxel <-> world mapping round-trips, and a world point maps to its slice.
    idx = np.array([167.0, 291.5, 1.0])
    np.testing.assert_allclose(vol.to_index(vol.to_world(idx)), idx)
    assert vol.to_index([0.0, 0.0, 200.0])[2] == pytest.approx(1.0)


def test_pydicom_ct_small(ct_small):
    vol = open_volume(ct_small)
    assert vol.size == (128, 128, 1)
    ds = pydicom.dcmread(ct_small)
    got = sitk.GetArrayFromImage(vol.slice_image(0))[0]
    np.testing.assert_array_equal(got, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_per_slice_rescale_applied(tmp_path, build):
    hu = np.full((2, 8, 8), 37.0, np.float32)
    uid = build.write_series(tmp_path, hu[:1], slope=1.0, intercept=-1024.0)
    build.write_slice(tmp_path / "b.dcm", hu[1], (-10, -20, 2.0), series_uid=uid,
                      study_uid="1.2.826.0.1.3680043.8.498.30", instance=2, slope=0.5, intercept=-1000.0)
    vol = open_volume(tmp_path)
    for k in (0, 1):
        assert np.all(sitk.GetArrayFromImage(vol.slice_image(k)) == 37.0)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.mha", "v.mhd"])
def test_image_files_keep_geometry(tmp_path, build, name):
    vol = build.ball((6, 12, 10), (2, 5, 4), 2)
    build.write_image(tmp_path / name, vol, (0.8, 0.9, 2.5), (-5.0, 7.0, 100.0))
    got = open_volume(tmp_path / name)
    assert isinstance(got, ImageVolume) and got.size == (10, 12, 6)
    np.testing.assert_allclose(got.spacing, [0.8, 0.9, 2.5], rtol=1e-6)
    np.testing.assert_allclose(got.origin, [-5.0, 7.0, 100.0], atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got.slice_image(2))[0], vol[2])


def test_flipped_nifti_reoriented_to_lps(tmp_path, build):
    vol = build.ball((4, 8, 8), (1, 2, 6), 1.5)
    build.write_image(tmp_path / "ras.nii.gz", vol, (1.0, 1.0, 2.0), (7.0, 7.0, 0.0),
                      (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    got = open_volume(tmp_path / "ras.nii.gz")
    np.testing.assert_allclose(got.direction, np.eye(3), atol=1e-6)
    # Voxel indices still count in the file's own order.
    np.testing.assert_allclose(got.voxel_to_world([6, 2, 1]), [1.0, 5.0, 2.0], atol=1e-5)


def test_unreadable_images_named(tmp_path, build):
    build.write_image(tmp_path / "v.mhd", build.ball((2, 4, 4), (1, 2, 2), 1))
    (tmp_path / "v.raw").unlink()
    with pytest.raises(IngestError, match=r"v\.mhd: cannot read image"):
        open_volume(tmp_path / "v.mhd")
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(IngestError, match=r"bad\.nii\.gz: cannot read image"):
        open_volume(tmp_path / "bad.nii.gz")
    with pytest.raises(IngestError, match="image file not found"):
        open_volume(tmp_path / "none.mha")


def test_truncated_pixel_data_names_the_slice(tmp_path, build):
    build.write_series(tmp_path, build.ball((3, 16, 16), (1, 8, 8), 3))
    data = (tmp_path / "s001.dcm").read_bytes()
    (tmp_path / "s001.dcm").write_bytes(data[: len(data) - 200])
    vol = open_volume(tmp_path)  # headers are fine
    with pytest.raises(IngestError, match=r"s001\.dcm, field PixelData: pixel data does not match"):
        vol.slice_image(1)


def test_non_axial_image_rejected(tmp_path, build):
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    build.write_image(tmp_path / "oblique.mha", build.ball((3, 4, 4), (1, 2, 2), 1),
                      direction=(1, 0, 0, 0, c, -s, 0, s, c))
    with pytest.raises(IngestError, match="not an axial volume"):
        open_volume(tmp_path / "oblique.mha")
