"""The generic manifest: pairs, unpaired crops, labels, splits, EHR, and every kind of bad row."""

import numpy as np
import pandas as pd
import pytest

from namd.cohort.ingest import prepare
from namd.cohort.ingest.errors import IngestError
from namd.cohort.store import Cohort


@pytest.fixture
def cohort_inputs(tmp_path, build):
    """Two patients scanned twice (DICOM, growing ball) and one single NIfTI scan."""
    for pid, radii in (("p1", (3, 5)), ("p2", (4, 4))):
        for t, r in enumerate(radii):
            build.write_series(tmp_path / pid / f"t{t}", build.ball((6, 48, 48), (3, 24, 24), r))
    build.write_image(tmp_path / "p3.nii.gz", build.ball((5, 40, 40), (2, 20, 20), 3), (0.8, 0.8, 2.0))
    centre = (-10 + 24 * 0.7, -20 + 24 * 0.7, 6.0)
    rows = [
        {"patient_id": "p1", "nodule_id": "a", "timepoint": 0, "image": "p1/t0", "x": centre[0],
         "y": centre[1], "z": centre[2], "label": 1, "SCT_LONG_DIA": 4.2, "SCT_MARGINS": 1,
         "age": 61, "gender": 1, "diagemph": ".M"},
        {"patient_id": "p1", "nodule_id": "a", "timepoint": 1, "image": "p1/t1", "x": centre[0],
         "y": centre[1], "z": centre[2], "label": 1, "SCT_LONG_DIA": 7.0, "SCT_MARGINS": 1,
         "age": 62, "gender": 1, "diagemph": ""},
        {"patient_id": "p2", "nodule_id": "a", "timepoint": 0, "image": "p2/t0", "x": 24, "y": 24,
         "z": 3, "space": "voxel", "label": 0, "SCT_MARGINS": 2},
        {"patient_id": "p2", "nodule_id": "a", "timepoint": 1, "image": "p2/t1", "x": 24, "y": 24,
         "slice_number": 4, "space": "voxel", "label": "", "SCT_MARGINS": 2},
        {"patient_id": "p3", "nodule_id": "b", "timepoint": 0, "image": "p3.nii.gz", "x": 20, "y": 20,
         "z": 2, "space": "voxel", "label": ""},
    ]
    return tmp_path, rows


def _run(tmp_path, rows, cfg, build, name="out", **kw):
    manifest = build.write_csv(tmp_path / "manifest.csv", rows)
    return prepare("manifest", {"manifest": manifest}, cfg, tmp_path / name, **kw)


def test_pairs_unpaired_labels_and_ehr(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    summary, errors = _run(tmp_path, rows, cfg, build)
    assert summary["pairs"] == 2 and summary["unpaired"] == 1 and errors.skipped == []
    c = Cohort(tmp_path / "out")
    assert c.meta["units"] == "HU" and c.crop_size == 32 and c.meta["pixel_spacing_mm"] == 1.0
    pairs = c.pairs().set_index("pair_id")
    p1 = pairs.loc["p1/a/t0-t1"]
    assert p1["label"] == 1 and p1["SCT_LONG_DIA"] == 4.2 and p1["followup_SCT_LONG_DIA"] == 7.0
    assert pd.isna(p1["diagemph"]) and p1["SCT_MARGINS"] == 1
    assert pairs.loc["p2/a/t0-t1", "label"] == 0  # the pair takes its rows' label
    base, follow = c.images([p1["baseline_index"], p1["followup_index"]])
    assert (follow > 0).sum() > (base > 0).sum() > 0  # the nodule grew
    unpaired = c.crops(kinds=("unpaired",))
    assert list(unpaired["patient_id"]) == ["p3"] and pd.isna(unpaired["label"].iloc[0])
    assert "p3.nii.gz" in unpaired["provenance"].iloc[0]
    assert c.summary()["split_leaks"] == []
    assert build.no_phi(tmp_path / "out")  # PatientName / PatientID of the DICOM never copied
    assert (tmp_path / "out" / "run_info.json").is_file()
    assert (tmp_path / "out" / "ingest_report.json").is_file()


def test_user_split_column_kept(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    for r in rows:
        r["split"] = {"p1": "test", "p2": "val", "p3": "train"}[r["patient_id"]]
    _run(tmp_path, rows, cfg, build)
    m = Cohort(tmp_path / "out").manifest
    assert dict(zip(m["patient_id"], m["split"], strict=True)) == {"p1": "test", "p2": "val", "p3": "train"}


@pytest.mark.parametrize("change, message", [
    ({"SCT_MARGINS": 4}, r"manifest\.csv line 2, field SCT_MARGINS: has code '4(\.0)?'"),
    ({"timepoint": 1}, r"line 3, field timepoint: duplicate observation p1/a/t1 \(first on line 2\)"),
    ({"image": "p1/nowhere"}, r"line 2, field image: image not found"),
    ({"x": "abc"}, r"line 2, field x: not a number"),
    ({"label": 2}, r"line 2, field label: unknown code '2'"),
    ({"z": 500.0}, r"line 2, field z: coordinate .* lies outside the volume along z"),
    ({"space": "pixels"}, r"line 2, field space: unknown coordinate space 'pixels'"),
    ({"split": "holdout"}, r"line 2, field split: unknown split 'holdout'"),
])
def test_bad_rows_stop_before_anything_is_written(cohort_inputs, cfg, build, change, message):
    tmp_path, rows = cohort_inputs
    rows[0].update(change)
    with pytest.raises(IngestError, match=message):
        _run(tmp_path, rows, cfg, build)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left


def test_missing_column_named(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    for r in rows:
        del r["x"]
    with pytest.raises(IngestError, match=r"manifest\.csv, field x: missing column x"):
        _run(tmp_path, rows, cfg, build)


@pytest.mark.parametrize("column, field", [("SCT_LONG_DAI", "SCT_LONG_DIA"), ("sct_margin", "SCT_MARGINS"),
                                           ("Sex", "gender"), ("agee", "age"), ("famchild_", "famchild")])
def test_column_spelt_like_an_ehr_field_is_an_error(cohort_inputs, cfg, build, column, field):
    """Read as an extra column, it would make every value of the field silently missing."""
    tmp_path, rows = cohort_inputs
    for r in rows:
        r[column] = r.pop(field, 1)
    with pytest.raises(IngestError) as err:
        _run(tmp_path, rows, cfg, build, on_error="skip")  # a table error: skip cannot help
    msg = str(err.value)
    assert f"manifest.csv, field {column}: column {column!r} looks like the EHR field {field}" in msg
    assert not (tmp_path / "out").exists()


def test_other_extra_columns_are_normal(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    for r in rows:  # 'race' and 'image' are 2 edits from 'age', which takes 1 (see tables.py)
        r.update({"notes": "x", "race": 1, "scanner": "GE", "SCT_LONG_DIA_mm": 4})
    summary, _ = _run(tmp_path, rows, cfg, build)
    assert summary["pairs"] == 2


def test_skip_leaves_out_bad_rows_and_their_pair(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    rows[1]["z"] = 500.0  # p1's follow-up lies outside its scan
    rows[2]["SCT_MARGINS"] = 7  # p2's baseline has an unknown code
    summary, errors = _run(tmp_path, rows, cfg, build, on_error="skip")
    assert summary["pairs"] == 0 and summary["unpaired"] == 1
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert set(skipped["category"]) == {"coordinate outside volume", "invalid", "pair incomplete",
                                        "nodule incomplete"}
    bad = skipped[skipped["category"] == "coordinate outside volume"].iloc[0]
    assert bad["file"].endswith("manifest.csv") and bad["line"] == 3 and bad["field"] == "z"
    assert summary["skipped_by_category"]["pair incomplete"] == 1  # p1's baseline, dropped with it
    assert (skipped["reason"].str.len() > 0).all()


def test_labels_must_agree_within_a_nodule(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    rows[1]["label"] = 0
    with pytest.raises(IngestError, match=r"line 3, field label: label 0 differs from label 1 on line 2"):
        _run(tmp_path, rows, cfg, build)


def test_split_must_be_constant_per_patient(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    for r in rows:
        r["split"] = "train"
    rows[1]["split"] = "test"
    with pytest.raises(IngestError, match="patient p1 has split 'test' here and 'train' on line 2"):
        _run(tmp_path, rows, cfg, build)


def test_hash_ids_replaces_every_supplied_id(cohort_inputs, cfg, build, monkeypatch):
    tmp_path, rows = cohort_inputs
    monkeypatch.setenv("NAMD_HASH_KEY", "a secret of 16+ bytes")  # shorter keys are refused
    _run(tmp_path, rows, cfg, build, hash_ids=True)
    _run(tmp_path, rows, cfg, build, name="again", hash_ids=True)
    m = Cohort(tmp_path / "out").manifest
    assert not set(m["patient_id"]) & {"p1", "p2", "p3"}
    assert all(len(v) == 16 for v in m["patient_id"])
    text = "".join(p.read_text() for p in (tmp_path / "out").glob("*.json")) + \
        (tmp_path / "out" / "manifest.csv").read_text()
    assert "p1/t0" not in text and "p3.nii.gz" not in text and "p1/a" not in text
    # The same key gives the same ids, so separately prepared cohorts stay linkable.
    assert list(Cohort(tmp_path / "again").manifest["patient_id"]) == list(m["patient_id"])
    assert Cohort(tmp_path / "out").meta["hashed_ids"] is True


def test_existing_output_kept_unless_overwrite(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    _run(tmp_path, rows, cfg, build)
    with pytest.raises(FileExistsError):
        _run(tmp_path, rows, cfg, build)
    rows.pop()  # drop p3
    summary, _ = _run(tmp_path, rows, cfg, build, overwrite=True)
    assert summary["unpaired"] == 0 and len(Cohort(tmp_path / "out")) == 4


def test_crops_are_resampled_hu(cohort_inputs, cfg, build):
    tmp_path, rows = cohort_inputs
    _run(tmp_path, rows, cfg, build)
    imgs = Cohort(tmp_path / "out").images(np.arange(5))
    assert imgs.dtype == np.float32 and imgs.shape == (5, 32, 32)
    assert set(np.unique(imgs[:, 15:17, 15:17])) == {40.0}  # nodule HU at every crop centre
