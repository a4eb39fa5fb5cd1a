"""Known futures of a cohort's test pairs on disk: further one-year follow-ups of the same
nodule, kept beside the cohort so a generator can be scored against the distribution of
futures (issue 26). Generator-agnostic: any source that can draw futures may write them.

    COHORT/known_futures.npy   int16 HU (P, M + H, crop, crop): per pair, M reference futures
                               then H held-out ones (scored as if a generator: the ceiling)
    COHORT/known_futures.csv   pair_id, followup_index: the P pairs, in the order of the .npy
    cohort.json                "known_futures": {"reference": M, "held_out": H,
                                                 "generator": ..., "streams": ...}

    futures_meta(reference, held_out, generator, streams)   the cohort.json entry
    KnownFuturesWriter(folder, pairs, futures, crop)        stream the P pairs into a folder
    read_known_futures(cohort_path)                         KnownFutures, or "not available: ..."

int16 stores whole HU exactly (CT renders are whole numbers in [-1024, 3071]); the writer
refuses anything else rather than round it. See docs/cohort-format.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from namd.cohort.store import CohortError, CohortFileError, _cohort_file
from namd.run.provenance import atomic_write_text
from namd.run.readers import load_npy, read_csv, read_json

__all__ = ["FUTURES_NPY", "FUTURES_CSV", "META_KEY", "CSV_COLUMNS", "KnownFutures",
           "KnownFuturesWriter", "futures_meta", "read_known_futures"]

FUTURES_NPY, FUTURES_CSV, META_KEY = "known_futures.npy", "known_futures.csv", "known_futures"
CSV_COLUMNS = ("pair_id", "followup_index")
META_FIELDS = ("reference", "held_out", "generator", "streams")
INT16 = np.iinfo(np.int16)
NOT_AVAILABLE = "not available: "


def futures_meta(reference: int, held_out: int, generator: str, streams: str) -> dict[str, Any]:
    """The `known_futures` entry of cohort.json: M, H, who drew them and what is redrawn."""
    return {"reference": int(reference), "held_out": int(held_out), "generator": generator,
            "streams": streams}


class KnownFuturesWriter:
    """Streams the futures of `pairs` pairs (each `futures` crops) into `folder`; memory holds
    one pair at a time. Write into a cohort's staging folder (CohortWriter.tmp) so the files
    appear with the cohort, atomically."""

    def __init__(self, folder: Path, pairs: int, futures: int, crop: int):
        self.folder, self.shape = Path(folder), (pairs, futures, crop, crop)
        self.rows: list[tuple[str, int]] = []
        self._array = (np.lib.format.open_memmap(self.folder / FUTURES_NPY, mode="w+",
                                                 dtype=np.int16, shape=self.shape)
                       if pairs else np.zeros(self.shape, np.int16))

    def add(self, pair_id: str, followup_index: int, images: np.ndarray) -> None:
        """The futures (M + H, crop, crop) of one pair, in HU; whole numbers in int16's range."""
        images = np.asarray(images)
        if len(self.rows) == self.shape[0]:
            raise CohortError(f"known futures: pair {pair_id!r} is one more than the {self.shape[0]} announced")
        if images.shape != self.shape[1:]:
            raise CohortError(f"known futures of pair {pair_id!r} have shape {images.shape}, "
                              f"expected {self.shape[1:]}")
        if not (np.isfinite(images).all() and (np.rint(images) == images).all()
                and images.min(initial=0) >= INT16.min and images.max(initial=0) <= INT16.max):
            raise CohortError(f"known futures of pair {pair_id!r} are not whole HU within int16 "
                              f"[{INT16.min}, {INT16.max}]: int16 would not store them exactly")
        self._array[len(self.rows)] = images.astype(np.int16)
        self.rows.append((str(pair_id), int(followup_index)))

    def close(self) -> None:
        """Check that every announced pair came, then finish the .npy and write the .csv."""
        if len(self.rows) != self.shape[0]:
            raise CohortError(f"known futures: {len(self.rows)} pairs written, {self.shape[0]} announced")
        if isinstance(self._array, np.memmap):
            self._array.flush()
            del self._array
        else:
            np.save(self.folder / FUTURES_NPY, self._array)
        lines = [",".join(CSV_COLUMNS), *(f"{pid},{idx}" for pid, idx in self.rows)]
        atomic_write_text(self.folder / FUTURES_CSV, "\n".join(lines) + "\n")


@dataclass
class KnownFutures:
    """The known futures of a cohort: `images[i]` holds pair `pair_ids[i]`'s M reference
    futures (`images[i, :reference]`) then its H held-out ones, float32 HU."""

    pair_ids: list[str]
    images: np.ndarray  # (P, M + H, crop, crop) float32 HU (converted from int16 on read)
    reference: int  # M
    held_out: int  # H
    path: Path = Path(FUTURES_CSV)  # the csv the pair ids came from (named in errors)
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {pid: i for i, pid in enumerate(self.pair_ids)}

    def of(self, pair_ids: Sequence[str]) -> np.ndarray:
        """The futures (N, M + H, h, w) of the given pairs, in that order; a pair without
        futures raises CohortFileError naming the file and the pair."""
        missing = [pid for pid in pair_ids if pid not in self._row]
        if missing:
            raise CohortFileError(self.path, f"holds no known futures for pair {missing[0]!r} "
                                  f"({len(missing)} of {len(pair_ids)} asked for are missing)",
                                  writer="cohort")
        return self.images[[self._row[pid] for pid in pair_ids]]


def _meta(path: Path, meta: dict[str, Any]) -> dict[str, Any] | str:
    """The `known_futures` entry of cohort.json (checked), or why there are no futures."""
    entry = meta.get(META_KEY)
    if meta.get("source") != "synthetic":
        return f"{NOT_AVAILABLE}{path.parent} is a {meta.get('source') or 'non-synthetic'} cohort; " \
               "only a simulator knows a nodule's other futures"
    if entry is None:
        return (f"{NOT_AVAILABLE}{path} records no known futures (made by generator "
                f"{meta.get('generator')!r} without them, or with synth.known_futures 0)")
    if not isinstance(entry, dict) or any(k not in entry for k in META_FIELDS):
        raise CohortFileError(path, f"'{META_KEY}' must be an object with {', '.join(META_FIELDS)}, "
                              f"got {entry!r}", writer="cohort")
    counts = entry["reference"], entry["held_out"]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise CohortFileError(path, f"'{META_KEY}' reference / held_out must be counts >= 0, got "
                              f"{counts}", writer="cohort")
    return entry


def read_known_futures(cohort_path: Path) -> KnownFutures | str:
    """The futures, or a one-line reason starting 'not available: ' (real cohort, a cohort made
    by a generator version without them or with synth.known_futures 0, futures whose generator
    is not the crops', file absent). Damaged files (wrong shape, dtype, a csv without its
    columns, counts disagreeing with cohort.json) raise CohortFileError naming the file.

    The futures are stored with the crops they were drawn beside, so they stay valid whatever
    generator version the reading namd has.
    """
    folder = Path(cohort_path)
    meta_path, npy, csv = folder / "cohort.json", folder / FUTURES_NPY, folder / FUTURES_CSV
    with _cohort_file():
        meta = read_json(meta_path, "cohort")
    entry = _meta(meta_path, meta)
    if isinstance(entry, str):
        return entry
    made_by = meta.get("generator")
    if entry["generator"] != made_by:
        return (f"{NOT_AVAILABLE}the futures were drawn by {entry['generator']!r}, the crops by "
                f"{made_by!r}")
    if entry["reference"] == 0:
        return f"{NOT_AVAILABLE}{meta_path} records 0 reference futures (synth.known_futures 0)"
    for path in (npy, csv):
        if not path.is_file():
            return f"{NOT_AVAILABLE}{path} is absent"
    images = _images(npy, entry["reference"] + entry["held_out"], int(meta.get("crop_size", 0)))
    pair_ids = _pair_ids(csv, len(images))
    return KnownFutures(pair_ids, np.asarray(images, dtype=np.float32), entry["reference"],
                        entry["held_out"], csv)


def _images(path: Path, futures: int, crop: int) -> np.ndarray:
    """The int16 array of known_futures.npy, its shape checked against cohort.json."""
    with _cohort_file():
        array = load_npy(path, "cohort")
    if array.ndim != 4 or array.shape[1:] != (futures, crop, crop):
        raise CohortFileError(path, f"holds shape {array.shape}, not (pairs, {futures}, {crop}, "
                              f"{crop}) as cohort.json's known_futures and crop_size say",
                              writer="cohort")
    if array.dtype != np.int16:
        raise CohortFileError(path, f"holds {array.dtype} values, not the int16 HU namd writes",
                              writer="cohort")
    return array


def _pair_ids(path: Path, pairs: int) -> list[str]:
    """The pair ids of known_futures.csv: its columns, one row per pair of the .npy, unique."""
    with _cohort_file():
        table = read_csv(path, "cohort", dtype={"pair_id": str}, keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise CohortFileError(path, f"lacks column(s) {', '.join(missing)}", writer="cohort")
    if len(table) != pairs:
        raise CohortFileError(path, f"has {len(table)} rows but {FUTURES_NPY} holds {pairs} pairs",
                              writer="cohort")
    ids = table["pair_id"].astype(str)
    bad = table.index[(ids == "") | ids.duplicated()]
    if len(bad):
        raise CohortFileError(path, f"line {int(bad[0]) + 2}: pair_id {ids[bad[0]]!r} is empty or "
                              "repeated", writer="cohort")
    if not np.issubdtype(table["followup_index"].dtype, np.integer):
        raise CohortFileError(path, "column followup_index is not whole crop indices", writer="cohort")
    return ids.tolist()
