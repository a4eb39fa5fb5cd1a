"""De-identification, proved: identifiers planted in DICOM tags, folder names, the manifest and
the EHR file appear in no output of `namd prepare --hash-ids` and `namd predict --hash-ids`
(file contents of every kind, and file names). `tiny_run` comes from tests/conftest.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pydicom
import pytest

from namd.cli.main import main
from namd.cohort.store import Cohort

TESTS = Path(__file__).resolve().parent
PATIENT_ID, NAME, BIRTH = "NAMDPID7391", "Plantedname^Zelda", "19470315"
STUDY_DATES = ("20020417", "20030422")
STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.7391001", "1.2.826.0.1.3680043.8.498.7391002"
FOLDERS = ("2002-04-17_CT", "2003-04-22_CT")  # TCIA-style exam folders: date in the name
PLANTED = (PATIENT_ID, *NAME.split("^"), BIRTH, *STUDY_DATES, STUDY_UID, SERIES_UID, *FOLDERS)
CENTRE = (-10 + 24 * 0.7, -20 + 24 * 0.7, 6.0)  # the ball of `ball((6, 48, 48), (3, 24, 24))`


def _module(path: Path, name: str) -> ModuleType:
    """A helper module of the tests by path (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dicom = _module(TESTS / "cohort" / "ingest" / "conftest.py", "_deid_dicom_builders")


def _plant(folder: Path, study: int) -> None:
    """One exam: a ball in a DICOM series whose identifying tags hold the planted values."""
    dicom.write_series(folder, dicom.ball((6, 48, 48), (3, 24, 24), 3 + study),
                       series_uid=f"{SERIES_UID}.{study}", study_uid=f"{STUDY_UID}.{study}")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = PATIENT_ID, NAME, BIRTH
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = STUDY_DATES[study]
        ds.save_as(f)


@pytest.fixture
def inputs(tmp_path, monkeypatch) -> Path:
    """IMAGES/<PatientID>/<study date>_CT/*.dcm for two exams, a manifest naming the patient
    by its PatientID, and the patient's EHR file with that id."""
    monkeypatch.delenv("NAMD_HASH_KEY", raising=False)  # a random key, never stored
    monkeypatch.chdir(tmp_path)
    rows = []
    for t, folder in enumerate(FOLDERS):
        _plant(tmp_path / "images" / PATIENT_ID / folder, t)
        rows.append({"patient_id": PATIENT_ID, "nodule_id": "n1", "timepoint": t, "label": 1,
                     "image": f"{PATIENT_ID}/{folder}", "x": CENTRE[0], "y": CENTRE[1],
                     "z": CENTRE[2], "SCT_LONG_DIA": 6.0 + t, "age": 63, "gender": 2})
    dicom.write_csv(tmp_path / "manifest.csv", rows)
    (tmp_path / "patient.json").write_text(json.dumps(
        {"patient_id": PATIENT_ID, "SCT_LONG_DIA": 6.0, "SCT_MARGINS": 1, "age": 63, "gender": 2}))
    return tmp_path


def _namd(monkeypatch, *args: str) -> None:
    """Run `namd ARGS` as the console command would (run_info.json records sys.argv)."""
    monkeypatch.setattr(sys, "argv", ["namd", *args])
    assert main(list(args)) == 0


def _leaks(folder: Path) -> list[str]:
    """'file: identifier' for every planted identifier in a file's bytes or relative path."""
    found = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        data = f.read_bytes() if f.is_file() else b""
        found += [f"{rel}: {p}" for p in PLANTED if p in rel or p.encode() in data]
    return found


def _prepare(monkeypatch, out: str, *extra: str) -> None:
    _namd(monkeypatch, "prepare", "manifest", "manifest.csv", "--images", "images", "--out", out,
          "--workers", "0", "--set", "data.crop_size=16", "--set", "data.pixel_spacing_mm=1.0", *extra)


def test_planted_identifiers_reach_no_output(inputs, tiny_run, monkeypatch):
    # the identifiers are really in the inputs, and the search finds them where they are kept
    ds = pydicom.dcmread(next((inputs / "images" / PATIENT_ID / FOLDERS[0]).iterdir()))
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.StudyDate) == (
        PATIENT_ID, NAME, BIRTH, STUDY_DATES[0])
    assert ds.SeriesInstanceUID.startswith(SERIES_UID) and ds.StudyInstanceUID.startswith(STUDY_UID)
    _prepare(monkeypatch, "plain")
    assert {f"manifest.csv: {p}" for p in (PATIENT_ID, *FOLDERS)} <= set(_leaks(inputs / "plain"))

    _prepare(monkeypatch, "cohort", "--hash-ids")
    cohort = Cohort(inputs / "cohort")
    assert len(cohort.pairs()) == 1 and cohort.meta["hashed_ids"] is True
    _namd(monkeypatch, "predict", "--run", str(tiny_run.path), "--ehr", "patient.json",
          "--image", f"images/{PATIENT_ID}/{FOLDERS[0]}", "--center", *map(str, CENTRE),
          "--k", "2", "--steps", "1", "--out", "prediction", "--hash-ids")
    written = {p.name for p in (inputs / "prediction").iterdir()}
    assert written == {"prediction.json", "samples.npy", "grid.png", "run_info.json"}
    assert json.loads((inputs / "prediction" / "prediction.json").read_text())["seed_from"] == "id"
    for out in ("cohort", "prediction"):
        assert _leaks(inputs / out) == [], out
    command = json.loads((inputs / "cohort" / "run_info.json").read_text())["command"]
    assert command.startswith("namd prepare manifest hash:") and "--hash-ids" in command
