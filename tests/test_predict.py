"""One new patient: input checks of `namd predict` (the end-to-end path is in test_pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from namd.cli import main
from namd.cohort.ehr import EHRError
from namd.predict import check_crop, load_ehr


def test_check_crop_rejects_wrong_size_and_non_hu(tmp_path):
    assert check_crop(np.full((64, 64), -800.0), 64, "x").dtype == np.float32
    with pytest.raises(ValueError, match=r"x: crop has shape \(32, 32\)"):
        check_crop(np.zeros((32, 32)), 64, "x")
    with pytest.raises(ValueError, match="do not look like HU"):
        check_crop(np.full((64, 64), 30000.0), 64, "x")
    with pytest.raises(ValueError, match="finite"):
        check_crop(np.full((64, 64), np.nan), 64, "x")


def test_load_ehr_validates_and_names_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"SCT_LONG_DIA": 12.0, "gender": 1, "famfather": None}))
    ehr = load_ehr(good)
    assert ehr.SCT_LONG_DIA == 12.0 and ehr.famfather is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"SCT_MARGINS": 5}))
    with pytest.raises(EHRError, match="bad.json.*SCT_MARGINS"):
        load_ehr(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_ehr(broken)


def test_cli_reports_a_missing_run_in_one_line(tmp_path, capsys):
    (tmp_path / "e.json").write_text("{}")
    np.save(tmp_path / "c.npy", np.zeros((64, 64)))
    code = main(["predict", "--run", str(tmp_path / "nope"), "--ehr", str(tmp_path / "e.json"),
                 "--crop", str(tmp_path / "c.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "config.yaml not found" in err[0]
