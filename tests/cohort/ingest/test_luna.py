"""LUNA16 / LUNA25 / DLCS annotation CSVs -> unpaired crops."""

import shutil

import numpy as np
import pandas as pd
import pytest

from namd.cohort.ingest import prepare
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.luna import read_luna
from namd.cohort.ingest.parallel import extract_all
from namd.cohort.ingest.pipeline import volume_settings
from namd.cohort.store import Cohort

UID_A, UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100", "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"


def _world(i, j, k, spacing=(0.8, 0.8, 2.0), origin=(-20.0, -20.0, -50.0)):
    return [o + v * s for o, v, s in zip(origin, (i, j, k), spacing, strict=True)]


@pytest.fixture
def luna16(tmp_path, build):
    """Two .mhd scans in subset folders and a LUNA16 annotations.csv (world mm)."""
    for sub, uid in (("subset0", UID_A), ("subset1", UID_B)):
        build.write_image(tmp_path / sub / f"{uid}.mhd", build.ball((8, 50, 50), (4, 25, 25), 3),
                          (0.8, 0.8, 2.0), (-20.0, -20.0, -50.0))
    x, y, z = _world(25, 25, 4)
    rows = [{"seriesuid": UID_A, "coordX": x, "coordY": y, "coordZ": z, "diameter_mm": 4.8},
            {"seriesuid": UID_A, "coordX": x - 3, "coordY": y, "coordZ": z, "diameter_mm": 3.5},
            {"seriesuid": UID_B, "coordX": x, "coordY": y, "coordZ": z + 0.4, "diameter_mm": 4.8}]
    return tmp_path, build.write_csv(tmp_path / "annotations.csv", rows)


def test_luna16_rows_become_unpaired_crops(luna16, cfg):
    root, csv = luna16
    errors = ErrorLog()
    plan = read_luna(csv, root, errors)
    assert plan.report["dialect"] == "luna16" and len(plan.requests) == 3
    entries = plan.entries({})
    assert [(e.patient_id, e.nodule_id, e.kind) for e in entries] == [
        (UID_A, "n1", "unpaired"), (UID_A, "n2", "unpaired"), (UID_B, "n1", "unpaired")]
    assert entries[0].note == "diameter 4.8 mm" and entries[0].ehr.SCT_LONG_DIA is None
    results = extract_all(plan.requests, volume_settings(cfg), 0, errors)
    crop = results[entries[0].key].crop
    assert crop[15:17, 15:17].min() == 40.0 and crop[0, 0] == -800.0
    # The second nodule is 3 mm to the patient's right: the ball moves 3 pixels to the left... of
    # the crop's x axis (columns run towards +x, the patient's left).
    moved = results[entries[1].key].crop
    assert np.argwhere(moved > 0)[:, 1].mean() == pytest.approx(np.argwhere(crop > 0)[:, 1].mean() + 3, abs=0.5)


def test_luna16_missing_image_and_column(luna16, cfg, build):
    root, csv = luna16
    rows = pd.read_csv(csv).to_dict("records")
    rows[1]["seriesuid"] = "1.2.3.4"
    build.write_csv(csv, rows)
    with pytest.raises(IngestError, match=r"annotations\.csv line 3, field seriesuid: no image named 1\.2\.3\.4"):
        read_luna(csv, root, ErrorLog())
    errors = ErrorLog("skip")
    assert len(read_luna(csv, root, errors).requests) == 2 and errors.counts() == {"missing image": 1}
    build.write_csv(csv, [{k: v for k, v in r.items() if k != "coordZ"} for r in rows])
    with pytest.raises(IngestError, match="field coordZ: missing column coordZ"):
        read_luna(csv, root, ErrorLog())


def test_luna25_labels_age_gender(tmp_path, cfg, build):
    build.write_image(tmp_path / "images" / f"{UID_A}.mha", build.ball((8, 50, 50), (4, 25, 25), 3),
                      (0.8, 0.8, 2.0), (-20.0, -20.0, -50.0))
    x, y, z = _world(25, 25, 4)
    base = {"PatientID": 100012, "SeriesInstanceUID": UID_A, "StudyDate": 19990102,
            "CoordX": x, "CoordY": y, "CoordZ": z, "LesionID": 1, "NoduleID": 1,
            "Age_at_StudyDate": 63, "Gender": "Male"}
    rows = [base | {"AnnotationID": "100012_1_19990102", "label": 1},
            base | {"AnnotationID": "100012_2_19990102", "label": 0, "Gender": "Female"}]
    csv = build.write_csv(tmp_path / "LUNA25_Public_Training_Development_Data.csv", rows)
    plan = read_luna(csv, tmp_path / "images", ErrorLog())
    e = plan.entries({})
    assert plan.report["dialect"] == "luna25"
    assert [(x.patient_id, x.nodule_id, x.label) for x in e] == [
        ("100012", "100012_1_19990102", 1), ("100012", "100012_2_19990102", 0)]
    assert (e[0].ehr.age, e[0].ehr.gender, e[1].ehr.gender) == (63.0, 1, 2)
    rows[1]["Gender"] = "x"
    build.write_csv(csv, rows)
    with pytest.raises(IngestError, match="line 3, field Gender: unknown gender 'x'"):
        read_luna(csv, tmp_path / "images", ErrorLog())
    rows[1] |= {"Gender": "Female", "AnnotationID": "100012_1_19990102"}
    build.write_csv(csv, rows)
    with pytest.raises(IngestError, match=r"line 3, field AnnotationID: duplicate nodule id .*first on line 2"):
        read_luna(csv, tmp_path / "images", ErrorLog())


def test_dlcs_and_real_dicom_end_to_end(tmp_path, cfg, build, real_series):
    # DLCS: images named by ct_nifti_file; LUNA16-style row on a DICOM folder named by its UID.
    build.write_image(tmp_path / "DLCS_0001.nii.gz", build.ball((8, 50, 50), (4, 25, 25), 3),
                      (0.8, 0.8, 2.0), (-20.0, -20.0, -50.0))
    x, y, z = _world(25, 25, 4)
    dlcs = build.write_csv(tmp_path / "DLCSD24_Annotations.csv", [
        {"patient-id": "DLCS_0001", "nodule_id": "DLCS_0001_01", "ct_nifti_file": "DLCS_0001.nii.gz",
         "coordX": x, "coordY": y, "coordZ": z, "w": 4.4, "h": 4.4, "d": 4.3, "Malignant_lbl": 1}])
    summary, _ = prepare("luna", {"annotations": dlcs, "images": tmp_path}, cfg, tmp_path / "dlcs")
    c = Cohort(tmp_path / "dlcs")
    assert summary["unpaired"] == 1 and c.meta["source"] == "dlcs"
    assert c.manifest["label"].tolist() == [1]
    shutil.copytree(real_series, tmp_path / "dicom" / build.real_uid)
    real = build.write_csv(tmp_path / "annotations.csv", [
        {"seriesuid": build.real_uid, "coordX": -65.2, "coordY": -105.7, "coordZ": 200.0}])
    prepare("luna", {"annotations": real, "images": tmp_path / "dicom"}, cfg, tmp_path / "real")
    c = Cohort(tmp_path / "real")
    assert "DICOM series #3 'ThoraxRoutine 8.0.0 B40f'" in c.manifest["provenance"][0]
    assert -150 < c.images([0])[0, 12:20, 12:20].mean() < 150  # tumour tissue at the centre
    assert build.no_phi(tmp_path / "real")
