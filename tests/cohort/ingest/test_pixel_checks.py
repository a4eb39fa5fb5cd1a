"""Nothing breaks, nothing leaks: pixel data checked against its header before decoding,
crops in a plausible HU range, and study folders that hold more than DICOM images."""

import logging
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    RLELossless,
    generate_uid,
)

from namd.cohort.ingest import prepare
from namd.cohort.ingest.crop import CropGeometry, Position, extract_crop, locate
from namd.cohort.ingest.errors import IngestError
from namd.cohort.ingest.volume import open_volume

GEOM = CropGeometry(16, 0.7)
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
       b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def _edit(folder, **tags):
    """Set header tags in every slice file of `folder` (the pixel data stays as it is)."""
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for tag, value in tags.items():
            setattr(ds, tag, value)
        ds.save_as(f)


def _crop_at_centre(vol):
    """The crop at the centre of the middle slice (voxel coordinates)."""
    pos = Position((vol.size[0] - 1) / 2, (vol.size[1] - 1) / 2, vol.size[2] // 2, space="voxel")
    k, centre = locate(vol, pos)
    return extract_crop(vol, k, centre, GEOM)[0]


def _as_jpeg_lossless(path):
    """Re-encode one slice's pixel data as JPEG Lossless (GDCM's encoder), header kept."""
    ds = pydicom.dcmread(path)
    tmp = path.with_name("tmp_" + path.name)
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(ds.pixel_array[None]))
    jpeg = pydicom.dcmread(tmp)
    tmp.unlink()
    ds.PixelData = jpeg.PixelData
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = jpeg.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=True)
    return jpeg.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("tags, needs", [({"Rows": 24}, 768), ({"Columns": 32}, 1024),
                                         ({"Rows": 8}, 256), ({"BitsAllocated": 32}, 1024)])
def test_header_that_does_not_match_pixel_data_is_named_before_decoding(tmp_path, build, tags,
                                                                        needs):
    # 16 x 16 x 16 bit = 512 bytes; a larger header made GDCM read past the buffer (garbage
    # "HU" that changed between runs), a smaller one would shear the image.
    build.write_series(tmp_path, build.ball((3, 16, 16), (1, 8, 8), 3))
    _edit(tmp_path, **tags)
    messages = []
    expected = (r"s001\.dcm, field PixelData: pixel data does not match the header: 512 bytes, "
                rf".* = {needs} bytes")
    for _ in range(2):
        vol = open_volume(tmp_path)  # the headers agree with each other
        with pytest.raises(IngestError, match=expected) as err:
            _crop_at_centre(vol)
        assert err.value.category == "unreadable file"
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_prepare_stops_on_a_short_slice_and_writes_nothing(tmp_path, build, cfg):
    build.write_series(tmp_path / "scan", build.ball((3, 16, 16), (1, 8, 8), 3))
    _edit(tmp_path / "scan", Rows=20)
    manifest = build.write_csv(tmp_path / "m.csv", [
        {"patient_id": "p", "nodule_id": "n", "timepoint": 0, "image": "scan", "x": 8, "y": 8,
         "z": 1, "space": "voxel"}])
    with pytest.raises(IngestError, match=r"m\.csv line 2.*s001\.dcm: pixel data does not match"):
        prepare("manifest", {"manifest": manifest}, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_odd_length_pixel_data_with_its_padding_byte_still_ingests(tmp_path, build):
    build.write_series(tmp_path, np.zeros((2, 5, 5), np.float32))
    stored = np.arange(25, dtype=np.uint8).reshape(5, 5)
    for f in sorted(tmp_path.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = stored.tobytes()  # 25 bytes, written with one padding byte
        ds.save_as(f)
    assert len(pydicom.dcmread(tmp_path / "s001.dcm").PixelData) == 26
    got = sitk.GetArrayFromImage(open_volume(tmp_path).slice_image(1))[0]
    np.testing.assert_array_equal(got, stored - 1024.0)


def test_rle_series_ingests_and_a_header_smaller_than_its_data_is_caught(tmp_path, build):
    vol = build.ball((3, 16, 16), (1, 8, 8), 3)
    build.write_series(tmp_path, vol)
    for f in sorted(tmp_path.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(open_volume(tmp_path).slice_image(1))[0],
                                  vol[1])
    _edit(tmp_path, Columns=8)  # GDCM would take the first half of each row's bytes, sheared
    with pytest.raises(IngestError, match=r"s001\.dcm, field PixelData: .*RLE segment decodes to "
                                          r"256 bytes, but Rows x Columns = 16 x 8 = 128"):
        open_volume(tmp_path).slice_image(1)


def test_jpeg_series_ingests_and_its_decoded_shape_is_checked(tmp_path, build):
    vol = build.ball((3, 16, 16), (1, 8, 8), 3)
    build.write_series(tmp_path, vol)
    syntaxes = {_as_jpeg_lossless(f) for f in sorted(tmp_path.glob("*.dcm"))}
    assert [s.is_compressed for s in syntaxes] == [True]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(open_volume(tmp_path).slice_image(1))[0],
                                  vol[1])
    _edit(tmp_path, Rows=24)
    with pytest.raises(IngestError, match=r"s001\.dcm, field PixelData: decoded pixel data is "
                                          r"16 x 16 x 1 \(columns x rows x frames\), the header "
                                          r"says 16 x 24"):
        open_volume(tmp_path).slice_image(1)


def test_rescale_to_implausible_hu_is_an_error_naming_the_slice(tmp_path, build):
    # Stored +-800 with RescaleSlope 40: +-32,000 "HU" after the rescale.
    hu = np.where(np.indices((3, 16, 16)).sum(axis=0) % 2, 32000.0, -32000.0).astype(np.float32)
    build.write_series(tmp_path / "dcm", hu, slope=40.0, intercept=0.0)
    assert np.abs(pydicom.dcmread(tmp_path / "dcm" / "s001.dcm").pixel_array).max() == 800
    with pytest.raises(IngestError, match=r"s001\.dcm: crop on slice 1: values -3\d{4}\.\.3\d{4} "
                                          r"do not look like HU \(plausible -2000\.\.4000") as err:
        _crop_at_centre(open_volume(tmp_path / "dcm"))
    assert err.value.category == "invalid"
    build.write_image(tmp_path / "v.nii.gz", hu)
    with pytest.raises(IngestError, match=r"v\.nii\.gz: crop on slice 1: values"):
        _crop_at_centre(open_volume(tmp_path / "v.nii.gz"))


def test_hu_bounds_are_the_ones_predict_uses(tmp_path, build):
    from namd.cohort.imaging import HU_RANGE, check_crop
    from namd.inference import prediction

    assert prediction.check_crop is check_crop  # predict reads its baseline through the same check

    lo, hi = HU_RANGE
    build.write_image(tmp_path / "in.mha", np.full((3, 16, 16), hi, np.float32))
    crop = _crop_at_centre(open_volume(tmp_path / "in.mha"))  # the bound itself is plausible
    assert crop.max() == hi and check_crop(crop, 16, "crop").max() == hi
    build.write_image(tmp_path / "out.mha", np.full((3, 16, 16), lo - 1, np.float32))
    with pytest.raises(IngestError, match="do not look like HU"):
        _crop_at_centre(open_volume(tmp_path / "out.mha"))
    with pytest.raises(ValueError, match="do not look like HU"):
        check_crop(np.full((16, 16), lo - 1), 16, "crop")


def test_real_series_crop_is_plausible_hu(real_series):
    crop = _crop_at_centre(open_volume(real_series))
    assert crop.shape == (16, 16) and -1024 <= crop.min() < crop.max() <= 4000


def _non_image_dicom(path, sop_class, **tags):
    """A small DICOM object that is not an image (a DICOMDIR, a report)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path, enforce_file_format=True)


def test_study_folder_files_that_are_not_images_skipped_with_one_note(tmp_path, real_series,
                                                                       caplog):
    for f in sorted(real_series.glob("*.dcm")):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "a.gif").write_bytes(GIF)
    (tmp_path / "README").write_text("Exported from TCIA. See LICENSE for the terms of use.\n" * 20)
    (tmp_path / "notes.txt").write_text("reader notes")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    _non_image_dicom(tmp_path / "DICOMDIR", MediaStorageDirectoryStorage, FileSetID="EXPORT")
    _non_image_dicom(tmp_path / "report.dcm", BasicTextSRStorage, SOPClassUID=BasicTextSRStorage,
                     SeriesInstanceUID=generate_uid(), Modality="SR")
    with caplog.at_level(logging.INFO, logger="namd.cohort.ingest.dicom"):
        vol = open_volume(tmp_path)
    assert vol.size == (512, 512, 3) and _crop_at_centre(vol).shape == (16, 16)
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"skipped 5 file(s) that are not DICOM images in {tmp_path} "
                     "(e.g. DICOMDIR, README, a.gif, ...)"]
    assert caplog.records[0].levelno == logging.WARNING  # shown by worker processes too
    for f in sorted(real_series.glob("*.dcm")):
        (tmp_path / f.name).unlink()
    with pytest.raises(IngestError, match=r"no DICOM files found \(5 other file\(s\)\)"):
        open_volume(tmp_path)


def test_dicom_without_preamble_or_suffix_is_still_read(tmp_path, build):
    vol = build.ball((3, 16, 16), (1, 8, 8), 3)
    build.write_series(tmp_path, vol)
    ds = pydicom.dcmread(tmp_path / "s001.dcm")
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "s001", implicit_vr=True, little_endian=True, enforce_file_format=False)
    (tmp_path / "s001.dcm").unlink()
    assert (tmp_path / "s001").read_bytes()[128:132] != b"DICM"
    got = open_volume(tmp_path)
    assert got.size == (16, 16, 3) and got.series.slices[1].path.name == "s001"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got.slice_image(1))[0], vol[1])


@pytest.mark.parametrize("name", ["s001.dcm", "s001"])
@pytest.mark.parametrize("keep", [140, 700, 930, -100])
def test_damaged_dicom_slice_is_an_error_naming_it(tmp_path, build, name, keep):
    # Cut inside the file meta, the geometry tags, just before the pixel data, inside it:
    # with the DICM preamble it is DICOM, whatever its name, and never skipped or cropped.
    build.write_series(tmp_path, build.ball((3, 16, 16), (1, 8, 8), 3))
    data = (tmp_path / "s001.dcm").read_bytes()
    assert data[128:132] == b"DICM" and len(data) > 1100
    (tmp_path / "s001.dcm").unlink()
    (tmp_path / name).write_bytes(data[:keep])
    with pytest.raises(IngestError, match=rf"{name.replace('.', '[.]')}\b"):
        vol = open_volume(tmp_path)
        for k in range(vol.size[2]):
            _ = vol.slice_image(k)
