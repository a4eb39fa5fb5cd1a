"""DICOM exams: grouping by series, ordering by position, checks, repairs and series choice."""

import shutil

import numpy as np
import pydicom
import pytest

from namd.cohort.ingest.dicom import choose_series, scan_exam
from namd.cohort.ingest.errors import IngestError


def test_real_series_sorted_by_position_not_file_name(tmp_path, real_series):
    # Names that sort the wrong way round: z must decide, not the name.
    for src, name in zip(sorted(real_series.glob("*.dcm")), ("c.dcm", "a.dcm", "b.dcm"), strict=True):
        shutil.copy(src, tmp_path / name)
    (series,) = scan_exam(tmp_path)
    assert series.usable and series.kernel == "B40f" and series.step == pytest.approx(8.0)
    z = [float(h.position[2]) for h in series.slices]
    assert z == sorted(z) == [192.0, 200.0, 208.0]
    assert [h.instance for h in series.slices] == [16, 15, 14]
    assert [h.path.name for h in series.slices] == ["b.dcm", "a.dcm", "c.dcm"]


def test_several_series_grouped_and_thinnest_soft_kernel_chosen(tmp_path, build):
    vol = build.ball((6, 16, 16), (3, 8, 8), 2)
    thick = build.write_series(tmp_path / "a", vol[::2], (0.7, 0.7, 4.0), thickness=4.0,
                               kernel="B30f", series_number=2)
    bone = build.write_series(tmp_path / "b", vol, (0.7, 0.7, 2.0), thickness=2.0, kernel="B80f",
                              series_number=3)
    soft = build.write_series(tmp_path / "c", vol, (0.7, 0.7, 2.0), thickness=2.0, kernel="B30f",
                              series_number=4)
    series = scan_exam(tmp_path)
    assert {s.uid for s in series} == {thick, bone, soft}
    chosen, reason = choose_series(series, tmp_path, avoid_kernels=("B80",))
    assert chosen.uid == soft and "thinnest" in reason
    named, reason = choose_series(series, tmp_path, wanted_uid=thick)
    assert named.uid == thick and "annotation" in reason
    with pytest.raises(IngestError, match="not found among 3 series"):
        choose_series(series, tmp_path, wanted_uid="1.2.3")


def test_missing_slice_rejected_with_message(tmp_path, build):
    vol = build.ball((6, 8, 8), (3, 4, 4), 2)
    build.write_series(tmp_path, vol)
    (tmp_path / "s003.dcm").unlink()
    (series,) = scan_exam(tmp_path)
    assert not series.usable
    assert "about 1 missing slice(s)" in series.problems[0] and "s002.dcm" in series.problems[0]
    with pytest.raises(IngestError, match="no usable CT series.*missing slice"):
        choose_series([series], tmp_path)


def test_varying_spacing_and_mixed_orientation_rejected(tmp_path, build):
    hu = np.zeros((8, 8), np.float32)
    kw = {"series_uid": "1.2.826.0.1.3680043.8.498.1", "study_uid": "1.2.826.0.1.3680043.8.498.2"}
    for i, z in enumerate((0.0, 2.0, 4.0, 7.0)):
        build.write_slice(tmp_path / "vary" / f"{i}.dcm", hu, (0, 0, z), instance=i + 1, **kw)
    (series,) = scan_exam(tmp_path / "vary")
    assert series.problems == [s for s in series.problems if "slice spacing varies" in s] != []
    kw["series_uid"] += "1"
    build.write_slice(tmp_path / "mixed" / "0.dcm", hu, (0, 0, 0), instance=1, **kw)
    build.write_slice(tmp_path / "mixed" / "1.dcm", hu, (0, 0, 2), instance=2,
                      iop=(1, 0, 0, 0, 0, -1), **kw)
    (series,) = scan_exam(tmp_path / "mixed")
    assert series.problems == ["mixed slice orientations"]


def test_not_axial_and_sheared_series_rejected(tmp_path, build):
    hu = np.zeros((8, 8), np.float32)
    kw = {"study_uid": "1.2.826.0.1.3680043.8.498.9"}
    for i in range(3):  # coronal slices
        build.write_slice(tmp_path / "cor" / f"{i}.dcm", hu, (0, i * 2.0, 0), instance=i + 1,
                          iop=(1, 0, 0, 0, 0, -1), series_uid="1.2.826.0.1.3680043.8.498.10", **kw)
        build.write_slice(tmp_path / "tilt" / f"{i}.dcm", hu, (0, i * 1.0, i * 2.0), instance=i + 1,
                          series_uid="1.2.826.0.1.3680043.8.498.11", **kw)
    assert "not axial" in scan_exam(tmp_path / "cor")[0].problems[0]
    assert "gantry tilt" in scan_exam(tmp_path / "tilt")[0].problems[0]


def test_duplicate_copy_and_localizer_repaired_and_said(tmp_path, build):
    vol = build.ball((4, 8, 8), (2, 4, 4), 2)
    uid = build.write_series(tmp_path, vol, study_uid="1.2.826.0.1.3680043.8.498.20")
    shutil.copy(tmp_path / "s001.dcm", tmp_path / "copy_of_s001.dcm")
    build.write_slice(tmp_path / "scout.dcm", np.zeros((8, 8), np.float32), (0, 0, 0), instance=99,
                      series_uid=uid, study_uid="1.2.826.0.1.3680043.8.498.20",
                      iop=(1, 0, 0, 0, 0, -1), localizer=True)
    (series,) = scan_exam(tmp_path)
    assert series.usable and len(series.slices) == 4
    assert series.repairs == ["dropped 1 localizer image(s)",
                              "dropped 1 duplicate file(s) of the same image"]


def test_corrupt_file_and_empty_folder_named(tmp_path, build):
    build.write_series(tmp_path, build.ball((2, 8, 8), (1, 4, 4), 2))
    (tmp_path / "notes.txt").write_text("ignored: not DICOM")
    (tmp_path / "broken.dcm").write_bytes(b"garbage" * 10)
    with pytest.raises(IngestError, match=r"broken\.dcm: not a readable DICOM file"):
        scan_exam(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no DICOM files found"):
        scan_exam(tmp_path / "empty")
    with pytest.raises(IngestError, match="image path not found"):
        scan_exam(tmp_path / "nowhere")


def test_missing_or_malformed_geometry_named(tmp_path, build):
    build.write_series(tmp_path, build.ball((3, 8, 8), (1, 4, 4), 2))
    ds = pydicom.dcmread(tmp_path / "s001.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0]
    ds.save_as(tmp_path / "s001.dcm")
    with pytest.raises(IngestError, match=r"s001\.dcm: malformed geometry tag"):
        scan_exam(tmp_path)
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "s001.dcm")
    with pytest.raises(IngestError, match=r"s001\.dcm, field ImagePositionPatient: missing DICOM tag"):
        scan_exam(tmp_path)
