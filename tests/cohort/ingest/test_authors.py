"""The authors' preprocessed jpg/npy format, imported as is (8-bit windowed, not HU)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from namd.cohort.ingest import prepare
from namd.cohort.ingest.authors import DEMO_ORDER
from namd.cohort.ingest.errors import IngestError
from namd.cohort.store import Cohort


def _block(pid, year, label, **over):
    values = {"SCT_PRE_ATT": 1, "SCT_EPI_LOC": 4, "SCT_LONG_DIA": 8.5, "SCT_PERP_DIA": 6.0,
              "SCT_MARGINS": 1, "unique_ids": pid, "year": year, "age": 66, "diagemph": np.nan,
              "gender": 2, "famfather": 0, "fammother": 1, "fambrother": 0, "famsister": 0,
              "famchild": 0, "label": label} | over
    return [values[k] for k in DEMO_ORDER]


def _pair(root, split, ident, pid, label, size=64, base_over=None, follow_over=None):
    """image/{split}/{ident}.jpg (baseline grey 60 | follow-up grey 200) + demo/{split}/{ident}.npy."""
    img = np.concatenate([np.full((size, size), 60, np.uint8), np.full((size, size), 200, np.uint8)], 1)
    (root / "image" / split).mkdir(parents=True, exist_ok=True)
    (root / "demo" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "image" / split / f"{ident}.jpg", quality=95)
    demo = _block(pid, 0, label, **(base_over or {})) + _block(pid, 1, label, **(follow_over or {}))
    np.save(root / "demo" / split / f"{ident}.npy", np.array(demo, dtype=np.float64))


@pytest.fixture
def authors(tmp_path):
    root = tmp_path / "namd_data"
    _pair(root, "train", "0001", 100001, 1, follow_over={"SCT_LONG_DIA": 11.0})
    _pair(root, "train", "0002", 100002, 0)
    _pair(root, "test", "0003", 100003, 0)
    return tmp_path, root


def test_import_as_is(authors, cfg, build):
    tmp_path, root = authors
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"crop_size": 64})})
    summary, _ = prepare("authors", {"root": root}, cfg, tmp_path / "out")
    c = Cohort(tmp_path / "out")
    assert c.meta["units"] == "windowed_uint8" and c.meta["pixel_spacing_known"] is False
    assert summary["pairs"] == 3 and summary["units_note"].startswith("grey values 0..255")
    pairs = c.pairs().set_index("pair_id")
    p = pairs.loc["train/0001"]
    assert (p["patient_id"], p["split"], p["label"]) == ("100001", "train", 1)
    assert p["SCT_LONG_DIA"] == 8.5 and p["followup_SCT_LONG_DIA"] == 11.0
    assert pd.isna(p["diagemph"]) and p["fammother"] == 1 and p["age"] == 66
    base, follow = c.images([p["baseline_index"], p["followup_index"]])
    assert abs(base.mean() - 60) < 2 and abs(follow.mean() - 200) < 2  # grey values kept, 0..255
    assert pairs.loc["test/0003", "split"] == "test"
    assert c.manifest["flags"].fillna("").eq("").all()


def test_resized_when_not_crop_size(authors, cfg):
    tmp_path, root = authors
    prepare("authors", {"root": root}, cfg, tmp_path / "out")  # cfg crops are 32 x 32
    c = Cohort(tmp_path / "out")
    assert c.images([0]).shape == (1, 32, 32) and set(c.manifest["flags"]) == {"resized"}


@pytest.mark.parametrize("kind, message", [
    ("width", r"0002\.jpg: image is 64x64; expected width = 2 x height"),
    ("code", r"0002\.npy, field SCT_MARGINS: has code 4\.0;"),
    ("ids", r"0002\.npy, field unique_ids: baseline id 100002 differs from follow-up id 7"),
    ("labels", r"0002\.npy, field label: labels must be one 0/1 value, got \[0, 1\]"),
    ("short", r"0002\.npy: expected 32 numbers, got shape \(31,\)"),
    ("nodemo", r"0002\.jpg: no demo/train/0002\.npy for this image"),
    ("corrupt", r"0002\.jpg: not a readable image"),
])
def test_bad_records(authors, cfg, kind, message):
    tmp_path, root = authors
    jpg, npy = root / "image" / "train" / "0002.jpg", root / "demo" / "train" / "0002.npy"
    demo = np.load(npy)
    if kind == "width":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(jpg)
    elif kind == "code":
        demo[4] = 4
    elif kind == "ids":
        demo[16 + 5] = 7
    elif kind == "labels":
        demo[31] = 1
    elif kind == "short":
        demo = demo[:31]
    elif kind == "nodemo":
        npy.unlink()
    elif kind == "corrupt":
        jpg.write_bytes(b"\xff\xd8 not a jpeg")
    if npy.exists():
        np.save(npy, demo)
    with pytest.raises(IngestError, match=message):
        prepare("authors", {"root": root}, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    summary, errors = prepare("authors", {"root": root}, cfg, tmp_path / "out", on_error="skip")
    assert summary["pairs"] == 2 and len(errors.skipped) == 1
    assert (tmp_path / "out" / "skipped.csv").is_file()


def test_missing_value_sentinel_and_pickles_refused(authors, cfg):
    tmp_path, root = authors
    npy = root / "demo" / "train" / "0002.npy"
    demo = np.load(npy)
    demo[4] = -1  # margins unknown, written as -1
    np.save(npy, demo)
    with pytest.raises(IngestError, match="SCT_MARGINS"):
        prepare("authors", {"root": root}, cfg, tmp_path / "out")
    prepare("authors", {"root": root, "missing_value": [-1.0]}, cfg, tmp_path / "out")
    row = Cohort(tmp_path / "out").pairs().set_index("pair_id").loc["train/0002"]
    assert pd.isna(row["SCT_MARGINS"])
    np.save(npy, np.array([{"a": 1}] * 32, dtype=object), allow_pickle=True)
    with pytest.raises(IngestError, match=r"0002\.npy: not a readable \.npy file"):
        prepare("authors", {"root": root}, cfg, tmp_path / "out2")


def test_not_the_authors_layout(tmp_path, cfg):
    with pytest.raises(IngestError, match="expected image/ and demo/ folders"):
        prepare("authors", {"root": tmp_path}, cfg, tmp_path / "out")
