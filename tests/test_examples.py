"""examples/: the EHR record, the baseline crop and the prediction script a user starts from."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from namd.cohort.ehr import EHR, EHR_FIELDS, report_sentence
from namd.cohort.imaging import check_crop
from namd.inference.patient import predict_patient
from namd.inference.scan import crop_nodule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REAL = EXAMPLES.parent / "tests" / "fixtures" / "lung-pet-ct-dx-A0002" / "dicom"


def _record() -> dict:
    return json.loads((EXAMPLES / "patient.json").read_text())


def test_patient_json_sets_all_13_fields_and_a_patient_id():
    record = _record()
    assert set(record) == {*EHR_FIELDS, "patient_id"}
    ehr = EHR.from_mapping(record, "examples/patient.json")
    assert ehr.missing() == []
    assert ehr.family_history() is True
    sentence = report_sentence(ehr)
    assert "12.4 mm by 9.8 mm" in sentence and "right upper lobe" in sentence
    assert "63 years old male" in sentence


def test_readme_explains_every_field():
    readme = (EXAMPLES / "README.md").read_text()
    for name in (*EHR_FIELDS, "patient_id"):
        assert f"`{name}`" in readme, name
    assert report_sentence(EHR.from_mapping(_record())) in " ".join(readme.split())


def test_crop_npy_is_a_plausible_model_crop():
    path = EXAMPLES / "crop.npy"
    assert path.stat().st_size <= 17_000
    crop = np.load(path, allow_pickle=False)
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    assert -1100 <= crop.min() < crop.max() <= 3000
    np.testing.assert_array_equal(check_crop(crop, 64, str(path)), crop)


def test_crop_npy_is_the_crop_the_readme_describes():
    crop = np.load(EXAMPLES / "crop.npy")
    np.testing.assert_allclose(crop_nodule(REAL, (167, 291.5, 1), space="voxel"), crop, atol=1e-3)


def test_predict_script_calls_the_api_it_names():
    assert "key" in inspect.signature(predict_patient).parameters
    script = EXAMPLES / "predict.py"
    assert len(script.read_text().splitlines()) <= 20
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "usage:" in done.stderr and "RUN" in done.stderr
