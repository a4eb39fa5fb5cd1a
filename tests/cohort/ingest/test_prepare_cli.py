"""`namd prepare ...` from the command line: summary, one-line errors, run_info, skip summary."""

import json
import shutil

from namd.cli.main import main
from namd.cohort.store import Cohort


def _manifest(tmp_path, build, real_series, z_follow=192.0):
    shutil.copytree(real_series, tmp_path / "scan")
    return build.write_csv(tmp_path / "cohort.csv", [
        {"patient_id": "A0002", "nodule_id": "t", "timepoint": 0, "image": "scan",
         "x": 167, "y": 291.5, "space": "voxel", "slice_number": 15, "label": 1},
        {"patient_id": "A0002", "nodule_id": "t", "timepoint": 1, "image": "scan",
         "x": 167, "y": 291.5, "z": 1, "space": "voxel", "label": 1},
        {"patient_id": "B", "nodule_id": "x", "timepoint": 0, "image": "scan",
         "x": -65.2, "y": -105.7, "z": z_follow, "label": 0}])


def test_prepare_manifest_cli(tmp_path, build, real_series, capsys):
    csv = _manifest(tmp_path, build, real_series)
    out = tmp_path / "cohort"
    rc = main(["prepare", "manifest", str(csv), "--out", str(out), "--workers", "0",
               "--set", "data.crop_size=32", "--set", "ingest.split_seed=3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 crops (1 pairs, 1 unpaired) from 2 patients, units HU" in printed
    info = json.loads((out / "run_info.json").read_text())
    assert info["complete"] and info["config"]["data"]["crop_size"] == 32
    assert info["config"]["ingest"]["split_seed"] == 3 and info["seed"] == 3
    c = Cohort(out)
    assert c.crop_size == 32 and c.meta["pixel_spacing_mm"] == 0.7
    assert build.no_phi(out)


def test_prepare_cli_errors_are_one_line(tmp_path, build, real_series, capsys):
    csv = _manifest(tmp_path, build, real_series, z_follow=900.0)
    out = tmp_path / "cohort"
    rc = main(["prepare", "manifest", str(csv), "--out", str(out), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.startswith("namd prepare: error: ") and "cohort.csv line 4, field z" in err
    assert len(err.strip().splitlines()) == 1
    rc = main(["prepare", "manifest", str(csv), "--out", str(out), "--workers", "0",
               "--on-error", "skip"])
    captured = capsys.readouterr()
    assert rc == 0 and "skipped 1 record(s)" in captured.out
    assert "cohort.csv line 4, field z: coordinate" in captured.err
    assert (out / "skipped.csv").read_text().count("\n") == 2
