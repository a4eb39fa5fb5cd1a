"""The cohort format: round trip, validation, patient-level splits, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from namd.cohort import store
from namd.cohort.ehr import EHR, EHR_FIELDS
from namd.cohort.store import Cohort, CohortError, CohortWriter, assign_splits, split_leaks

SIZE = 16
EHR_A = EHR(SCT_PRE_ATT=2, SCT_EPI_LOC=5, SCT_LONG_DIA=7.0, SCT_PERP_DIA=5.0, SCT_MARGINS=3,
            age=61.0, gender=2)  # diagemph and fam* missing


def _img(value: float) -> np.ndarray:
    return np.full((SIZE, SIZE), value, np.float32) + np.arange(SIZE, dtype=np.float32)


def _write(path, pairs=3, unpaired=2, overwrite=False, split=lambda i: "train") -> CohortWriter:
    w = CohortWriter(path, SIZE, 0.7, source="test", overwrite=overwrite)
    for i in range(pairs):
        pid = f"P{i}"
        for kind, t in (("baseline", 0), ("followup", 1)):
            w.add(_img(i * 10 + t), patient_id=pid, nodule_id="N1", kind=kind, split=split(i),
                  label=i % 2, ehr=EHR_A, pair_id=f"{pid}-N1", timepoint=t)
    for j in range(unpaired):
        w.add(_img(-500 - j), patient_id=f"U{j}", nodule_id="N1", kind="unpaired", split="val",
              label=None, ehr=EHR(), timepoint=0)
    return w


def test_round_trip(tmp_path):
    out = _write(tmp_path / "c").close()
    c = Cohort(out)
    assert len(c) == 8 and c.crop_size == SIZE
    assert set(c.manifest.columns) == set(store.MANIFEST_COLUMNS)
    np.testing.assert_array_equal(c.images([1, 0, 6]), np.stack([_img(1), _img(0), _img(-500)]))
    assert c.images([0]).dtype == np.float32
    row = c.manifest.iloc[0]
    assert c.ehr(row) == EHR_A  # missing stays missing, codes stay ints
    assert c.manifest["label"].isna().sum() == 2  # unpaired labels missing, not 0
    assert c.manifest.loc[c.manifest.kind == "unpaired", "diagemph"].isna().all()
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["units"] == "HU" and meta["n_crops"] == 8 and meta["format_version"] == 1


def test_pairs_and_crops(tmp_path):
    c = Cohort(_write(tmp_path / "c").close())
    pairs = c.pairs()
    assert len(pairs) == 3
    for _, p in pairs.iterrows():
        base, follow = c.images([p.baseline_index, p.followup_index])
        assert follow[0, 0] - base[0, 0] == 1.0  # the follow-up of the same pair
    assert list(c.crops("val", kinds=("unpaired",))["patient_id"]) == ["U0", "U1"]
    assert len(c.crops(kinds=("baseline",))) == 3


def test_many_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 4)
    out = _write(tmp_path / "c", pairs=5, unpaired=3).close()
    assert len(list((out / "images").glob("*.npy"))) == 4  # 13 crops in chunks of 4
    c = Cohort(out)
    np.testing.assert_array_equal(c.images([12, 4, 9])[:, 0, 0], [-502, 20, 41])


def test_assign_splits_by_patient():
    ids = [f"P{i // 3}" for i in range(300)]  # 100 patients, 3 crops each
    splits = assign_splits(ids, (0.7, 0.1, 0.2), seed=5)
    assert set(splits) == set(ids)
    counts = pd.Series(splits).value_counts()
    assert counts["train"] == 70 and counts["val"] == 10 and counts["test"] == 20
    assert splits == assign_splits(list(reversed(ids)), (0.7, 0.1, 0.2), seed=5)
    assert splits != assign_splits(ids, (0.7, 0.1, 0.2), seed=6)


def test_patient_in_two_splits_is_refused(tmp_path):
    w = CohortWriter(tmp_path / "c", SIZE, 0.7)
    w.add(_img(0), patient_id="P1", nodule_id="N1", kind="unpaired", split="train", label=0, ehr=EHR())
    w.add(_img(0), patient_id="P1", nodule_id="N2", kind="unpaired", split="test", label=0, ehr=EHR())
    with pytest.raises(CohortError, match="P1"):
        w.close()
    assert not (tmp_path / "c").exists()
    assert list(tmp_path.iterdir()) == []  # no partial folder left behind


def test_split_leaks_detects_crossing():
    m = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", "val"]})
    assert split_leaks(m) == ["a"]


@pytest.mark.parametrize("pairs", [0, 1, 2, 3])
def test_any_number_of_pairs_validates(tmp_path, pairs):
    """Regression: an unpaired-only cohort (0 pairs) used to fail validation."""
    assert len(Cohort(_write(tmp_path / "c", pairs=pairs).close()).pairs()) == pairs


def test_incomplete_pair_is_refused(tmp_path):
    w = CohortWriter(tmp_path / "c", SIZE, 0.7)
    w.add(_img(0), patient_id="P1", nodule_id="N1", kind="baseline", split="train", label=0,
          ehr=EHR(), pair_id="P1-N1")
    with pytest.raises(CohortError, match="P1-N1"):
        w.close()
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"image": np.zeros((SIZE, SIZE + 1), np.float32)}, "shape"),
    ({"image": np.full((SIZE, SIZE), np.nan, np.float32)}, "non-finite"),
    ({"kind": "later"}, "kind"),
    ({"split": "holdout"}, "split"),
])
def test_bad_crop_is_refused(tmp_path, kwargs, match):
    w = CohortWriter(tmp_path / "c", SIZE, 0.7)
    args = {"image": _img(0), "patient_id": "P1", "nodule_id": "N1", "kind": "unpaired",
            "split": "train", "label": 0, "ehr": EHR(), **kwargs}
    with pytest.raises(CohortError, match=match):
        w.add(args.pop("image"), **args)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_writes_are_atomic(tmp_path):
    out = tmp_path / "c"
    w = _write(out)
    assert not out.exists()  # nothing under the final name while writing
    w.close()
    before = (out / "manifest.csv").read_bytes()
    with pytest.raises(FileExistsError):
        _write(out)
    # A failed overwrite leaves the old cohort intact.
    w = _write(out, pairs=1, overwrite=True)
    w.abort()
    assert (out / "manifest.csv").read_bytes() == before
    # A successful overwrite replaces it.
    _write(out, pairs=1, unpaired=0, overwrite=True).close()
    assert len(Cohort(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_reader_errors(tmp_path):
    with pytest.raises(CohortError, match="missing"):
        Cohort(tmp_path)
    out = _write(tmp_path / "c").close()
    meta = json.loads((out / "cohort.json").read_text())
    (out / "cohort.json").write_text(json.dumps({**meta, "n_crops": 99}))
    with pytest.raises(CohortError, match="99"):
        Cohort(out)
    (out / "cohort.json").write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(CohortError, match="format_version"):
        Cohort(out)
    (out / "cohort.json").write_text(json.dumps(meta))
    (out / "images" / "000000.npy").unlink()
    with pytest.raises(CohortError, match="000000.npy"):
        Cohort(out).images([0])


def test_manifest_missing_column_is_named(tmp_path):
    out = _write(tmp_path / "c").close()
    m = pd.read_csv(out / "manifest.csv").drop(columns=["famchild"])
    m.to_csv(out / "manifest.csv", index=False)
    with pytest.raises(CohortError, match="famchild"):
        Cohort(out)


def test_summary(tmp_path):
    c = Cohort(_write(tmp_path / "c").close())
    s = c.summary()
    assert s["n_pairs"] == 3 and s["n_patients"] == 5 and s["split_leaks"] == []
    assert s["counts"]["train/baseline/1"] == 1 and s["counts"]["val/unpaired/missing"] == 2
    assert s["missing_fraction"]["diagemph"] == 1.0 and s["missing_fraction"]["age"] == pytest.approx(2 / 8)
    assert set(s["missing_fraction"]) == set(EHR_FIELDS)
    assert s["image_stats"]["min"] == -501.0 and s["image_stats"]["units"] == "HU"
