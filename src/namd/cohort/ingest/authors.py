"""The authors' preprocessed format (shxjames/NAMD), imported as is.

    ROOT/image/{split}/{id}.jpg   baseline | follow-up crops side by side (width = 2 x height)
    ROOT/demo/{split}/{id}.npy    32 numbers: 16 for the baseline year, then 16 for the
                                  follow-up year, each in DEMO_ORDER (reference facts, sect. 6)
The JPEGs are 8-bit and already windowed, not HU: the crops are stored as their grey values
0..255 as float32, and the cohort's units are "windowed_uint8" (the authors feed v/127.5 - 1
to their networks). Their pixel spacing is unknown; cohort.json says so. Missing values in
the .npy files are NaN (or the values given with --missing-value). The .npy files are read
with allow_pickle=False.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.transform import resize

from namd.cohort.ehr import EHR
from namd.cohort.ingest.build import Entry, Plan
from namd.cohort.ingest.errors import ErrorLog, IngestError, as_ingest_error
from namd.cohort.ingest.parallel import CropResult

DEMO_ORDER = ("SCT_PRE_ATT", "SCT_EPI_LOC", "SCT_LONG_DIA", "SCT_PERP_DIA", "SCT_MARGINS",
              "unique_ids", "year", "age", "diagemph", "gender", "famfather", "fammother",
              "fambrother", "famsister", "famchild", "label")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
UNITS = "windowed_uint8"
RESIZED = "resized"


def load_pair_image(path: Path, crop_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Baseline and follow-up crops (float32 grey values 0..255) from one side-by-side JPEG."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "RGB"):
                raise IngestError(f"expected an 8-bit grey or RGB image, got mode {img.mode}", path)
            grey = np.asarray(img.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise IngestError(f"not a readable image ({exc})", path, category="unreadable file") from None
    h, w = grey.shape
    if w != 2 * h:
        raise IngestError(f"image is {w}x{h}; expected width = 2 x height (baseline | follow-up)", path)
    halves, flags = [grey[:, :h], grey[:, h:]], []
    if h != crop_size:
        halves = [resize(x, (crop_size, crop_size), order=1, anti_aliasing=h > crop_size,
                         preserve_range=True).astype(np.float32) for x in halves]
        flags.append(RESIZED)
    return halves[0], halves[1], flags


def _value(x: float, missing: tuple[float, ...]) -> float | None:
    """None for NaN and the user's missing-value sentinels."""
    return None if math.isnan(x) or any(x == m for m in missing) else float(x)


def load_demo(path: Path, missing: tuple[float, ...]) -> list[dict[str, float | None]]:
    """The two 16-value blocks of a demo .npy file as dicts keyed by DEMO_ORDER."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IngestError(f"not a readable .npy file ({exc})", path, category="unreadable file") from None
    if arr.size != 2 * len(DEMO_ORDER) or not np.issubdtype(arr.dtype, np.number):
        raise IngestError(f"expected 32 numbers, got shape {arr.shape} of {arr.dtype}", path)
    flat = arr.astype(np.float64).reshape(-1)
    return [{name: _value(flat[i + 16 * b], missing) for i, name in enumerate(DEMO_ORDER)}
            for b in (0, 1)]


def _whole(path: Path, field: str, value: float | None) -> int | None:
    """A value that must be a whole number (ids, years, labels)."""
    if value is None:
        return None
    if value != int(value):
        raise IngestError(f"expected a whole number, got {value}", path, field=field)
    return int(value)


def _pair_fields(path: Path, base: dict, follow: dict) -> tuple[str, int, int, int | None]:
    """Patient id, the two years and the label, checked for agreement between the blocks."""
    pid_b, pid_f = _whole(path, "unique_ids", base["unique_ids"]), _whole(path, "unique_ids", follow["unique_ids"])
    if pid_b is None:
        raise IngestError("missing patient id", path, field="unique_ids", category="missing value")
    if pid_f is not None and pid_f != pid_b:
        raise IngestError(f"baseline id {pid_b} differs from follow-up id {pid_f}", path, field="unique_ids")
    y_b, y_f = _whole(path, "year", base["year"]), _whole(path, "year", follow["year"])
    y_b = 0 if y_b is None else y_b
    y_f = y_b + 1 if y_f is None else y_f
    if y_f <= y_b:
        raise IngestError(f"follow-up year {y_f} is not after baseline year {y_b}", path, field="year")
    labels = {_whole(path, "label", v) for v in (base["label"], follow["label"])} - {None}
    if len(labels) > 1 or not labels <= {0, 1}:
        raise IngestError(f"labels must be one 0/1 value, got {sorted(labels)}", path, field="label")
    return str(pid_b), y_b, y_f, labels.pop() if labels else None


def _record(image: Path, demo: Path, split: str, ident: str, crop_size: int,
            missing: tuple[float, ...]) -> tuple[list[Entry], dict[str, CropResult]]:
    """The two manifest rows and two crops of one authors' pair."""
    base_img, follow_img, flags = load_pair_image(image, crop_size)
    base, follow = load_demo(demo, missing)
    pid, y_b, y_f, label = _pair_fields(demo, base, follow)
    try:
        ehrs = [EHR.from_mapping(block, record=f"{split}/{ident}") for block in (base, follow)]
    except ValueError as exc:
        raise as_ingest_error(exc, demo) from None
    pair_id, rel = f"{split}/{ident}", f"image/{image.parent.name}/{image.name}"
    entries, results = [], {}
    for kind, year, crop, ehr in (("baseline", y_b, base_img, ehrs[0]), ("followup", y_f, follow_img, ehrs[1])):
        key = f"{pair_id}/{kind}"
        entries.append(Entry(key, pid, ident, kind, year, label, ehr, pair_id=pair_id, split=split,
                             image=rel, record=pair_id))
        half = "left" if kind == "baseline" else "right"
        results[key] = CropResult(key, crop, tuple(flags), -1, (math.nan,) * 3,
                                  f"authors' JPEG, {half} half", ())
    return entries, results


def read_authors(root: str | Path, errors: ErrorLog, crop_size: int,
                 missing: tuple[float, ...] = ()) -> tuple[Plan, dict[str, CropResult]]:
    """Every pair of the authors' folders; returns the plan (no crops to cut) and the crops."""
    root = Path(root)
    if not (root / "image").is_dir() or not (root / "demo").is_dir():
        raise IngestError("expected image/ and demo/ folders (the authors' format)", root,
                          category="unreadable file")
    entries, results, pairs = [], {}, 0
    for split_dir in sorted(p for p in (root / "image").iterdir() if p.is_dir()):
        split = SPLIT_NAMES.get(split_dir.name.lower())
        if split is None:
            raise IngestError(f"unknown split folder {split_dir.name!r} ({', '.join(SPLIT_NAMES)})",
                              split_dir, category="unknown code")
        demos = {p.stem: p for p in (root / "demo" / split_dir.name).glob("*.npy")}
        images = {p.stem: p for p in split_dir.glob("*.jpg")}
        for ident in sorted(set(demos) | set(images)):
            try:
                if ident not in demos:
                    raise IngestError(f"no demo/{split_dir.name}/{ident}.npy for this image",
                                      images[ident], category="missing file")
                if ident not in images:
                    raise IngestError(f"no image/{split_dir.name}/{ident}.jpg for this file",
                                      demos[ident], category="missing file")
                e, r = _record(images[ident], demos[ident], split, ident, crop_size, missing)
            except IngestError as err:
                errors.report(err.within(record=f"{split}/{ident}"))
                continue
            entries += e
            results.update(r)
            pairs += 1
    report = {"pairs_read": pairs, "units_note": "grey values 0..255 of the authors' windowed "
              "8-bit JPEGs, not HU; network input = v / 127.5 - 1", "pixel_spacing_known": False}
    return Plan.fixed([], entries, report), results
