"""A cohort on disk: the contract between every ingester and every stage.

Layout (documented in docs/cohort-format.md):
    cohort.json        format version, crop size, pixel spacing, units, source, counts
    manifest.csv       one row per crop: ids, kind, split, label, the 13 EHR fields, provenance
    images/NNNNNN.npy  float32 crops (n, H, W), CHUNK crops per file, read lazily by memory map
Cohorts are written atomically: they appear under their final name only when complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from namd.cohort.ehr import EHR, EHR_FIELDS
from namd.run.contract import RunFileError
from namd.run.provenance import atomic_dir, atomic_write_json
from namd.run.readers import load_npy, read_csv, read_json

FORMAT_VERSION = 1
CHUNK = 1024
KINDS = ("baseline", "followup", "unpaired")
SPLITS = ("train", "val", "test")
UNITS = ("HU", "windowed_uint8")
ID_COLUMNS = ("patient_id", "nodule_id", "pair_id")
MANIFEST_COLUMNS = ("crop_index", *ID_COLUMNS, "kind", "timepoint", "split", "label", *EHR_FIELDS,
                    "pixel_spacing_mm", "source", "provenance", "flags")


class CohortError(ValueError):
    """A cohort that breaks the format contract; the message names the file, row or field."""


class CohortFileError(CohortError, RunFileError):
    """A cohort file that is missing or damaged: both a CohortError and a RunFileError."""


@contextlib.contextmanager
def _cohort_file() -> Iterator[None]:
    """Raise the run-file errors of the cohort's readers as CohortFileError."""
    try:
        yield
    except CohortFileError:
        raise
    except RunFileError as exc:
        raise CohortFileError(exc.path, exc.problem, exc.remedy) from None


def assign_splits(patient_ids: Sequence[str], fractions: tuple[float, float, float],
                  seed: int) -> dict[str, str]:
    """Assign each patient (never each crop) to train/val/test with the given fractions."""
    unique = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    total = sum(fractions)
    n_train = int(round(len(unique) * fractions[0] / total))
    n_val = int(round(len(unique) * fractions[1] / total))
    out = {}
    for rank, idx in enumerate(order):
        out[unique[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def split_leaks(manifest: pd.DataFrame) -> list[str]:
    """Patients whose crops lie in more than one split (must be empty)."""
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    return sorted(per_patient[per_patient > 1].index.astype(str))


class CohortWriter:
    """Streams crops into a new cohort directory; `close()` validates and moves it into place."""

    def __init__(self, out: Path, crop_size: int, pixel_spacing_mm: float, units: str = "HU",
                 source: str = "", overwrite: bool = False, extra_meta: dict[str, Any] | None = None):
        if units not in UNITS:
            raise CohortError(f"units must be one of {UNITS}, got {units!r}")
        self.out = Path(out)
        self.crop_size = crop_size
        self.meta = {"format_version": FORMAT_VERSION, "crop_size": crop_size,
                     "pixel_spacing_mm": pixel_spacing_mm, "units": units, "source": source,
                     "chunk": CHUNK, **(extra_meta or {})}
        self._ctx = atomic_dir(self.out, overwrite=overwrite)
        self.tmp = self._ctx.__enter__()
        (self.tmp / "images").mkdir()
        self.rows: list[dict[str, Any]] = []
        self._buffer: list[np.ndarray] = []
        self._n_chunks = 0

    def add(self, image: np.ndarray, *, patient_id: str, nodule_id: str, kind: str, split: str,
            label: int | None, ehr: EHR, pair_id: str = "", timepoint: int = 0,
            source: str = "", provenance: str = "", flags: str = "",
            pixel_spacing_mm: float | None = None) -> int:
        """Append one crop with its manifest row; returns its crop index."""
        if image.shape != (self.crop_size, self.crop_size):
            raise CohortError(f"crop of {patient_id}/{nodule_id} has shape {image.shape}, "
                              f"expected ({self.crop_size}, {self.crop_size})")
        if kind not in KINDS or split not in SPLITS:
            raise CohortError(f"crop of {patient_id}/{nodule_id}: kind {kind!r} / split {split!r} not allowed")
        if not np.isfinite(image).all():
            raise CohortError(f"crop of {patient_id}/{nodule_id} holds non-finite values")
        index = len(self.rows)
        row = {"crop_index": index, "patient_id": str(patient_id), "nodule_id": str(nodule_id),
               "pair_id": str(pair_id), "kind": kind, "timepoint": int(timepoint), "split": split,
               "label": label, **ehr.as_dict(),
               "pixel_spacing_mm": pixel_spacing_mm or self.meta["pixel_spacing_mm"],
               "source": source or self.meta["source"], "provenance": provenance, "flags": flags}
        self.rows.append(row)
        self._buffer.append(np.asarray(image, dtype=np.float32))
        if len(self._buffer) == CHUNK:
            self._flush()
        return index

    def _flush(self) -> None:
        """Write the buffered crops as the next chunk file."""
        if self._buffer:
            np.save(self.tmp / "images" / f"{self._n_chunks:06d}.npy", np.stack(self._buffer))
            self._n_chunks += 1
            self._buffer = []

    def close(self) -> Path:
        """Validate (ids, pairs, split integrity), write manifest and meta, and publish."""
        try:
            self._flush()
            manifest = pd.DataFrame(self.rows, columns=list(MANIFEST_COLUMNS))
            validate_manifest(manifest, str(self.out))
            manifest["label"] = manifest["label"].astype("Int64")
            manifest.to_csv(self.tmp / "manifest.csv", index=False)
            atomic_write_json(self.tmp / "cohort.json", {**self.meta, "n_crops": len(manifest)})
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)
        return self.out

    def abort(self) -> None:
        """Discard everything written so far."""
        err = RuntimeError("aborted")
        self._ctx.__exit__(RuntimeError, err, None)


def validate_manifest(manifest: pd.DataFrame, where: str) -> None:
    """Check the contract: columns, unique crop ids, complete pairs, no patient across splits."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CohortError(f"{where}: manifest lacks column(s) {', '.join(missing)}")
    dup = manifest[manifest.duplicated(["patient_id", "nodule_id", "kind", "timepoint"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise CohortError(f"{where}: duplicate crop id (patient {r.patient_id}, nodule {r.nodule_id}, "
                          f"{r.kind}, timepoint {r.timepoint}) at row {int(dup.index[0])}")
    paired = manifest[manifest["kind"] != "unpaired"]
    counts = paired.groupby("pair_id")["kind"].agg(lambda k: tuple(sorted(k)))
    # Compare element by element: pandas treats a tuple on the right of `!=` as list-like
    # (deprecated), and raises when there are no pairs at all (an unpaired-only cohort).
    bad = counts[[k != ("baseline", "followup") for k in counts]]
    if len(bad):
        raise CohortError(f"{where}: pair {bad.index[0]!r} must have exactly one baseline and one "
                          f"follow-up crop, has {list(bad.iloc[0])}")
    leaks = split_leaks(manifest)
    if leaks:
        raise CohortError(f"{where}: patient(s) in more than one split: {', '.join(leaks[:5])}")


class Cohort:
    """Read access to a cohort directory; crops are memory-mapped, never all loaded."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path, manifest_path = self.path / "cohort.json", self.path / "manifest.csv"
        with _cohort_file():
            self.meta: dict[str, Any] = read_json(meta_path, "cohort")
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise CohortError(f"{meta_path}: format_version {self.meta.get('format_version')} "
                                  f"is not supported (expected {FORMAT_VERSION})")
            self.manifest = read_csv(manifest_path, "cohort", dtype={c: str for c in ID_COLUMNS},
                                     keep_default_na=False,
                                     na_values={c: [""] for c in ("label", *EHR_FIELDS)})
            if len(self.manifest) != self.meta.get("n_crops"):
                raise CohortFileError(manifest_path, f"{len(self.manifest)} rows but cohort.json "
                                      f"says {self.meta.get('n_crops')} crops", writer="cohort")
        validate_manifest(self.manifest, str(manifest_path))
        try:
            self.manifest["label"] = self.manifest["label"].astype("Int64")
        except (TypeError, ValueError) as exc:
            raise CohortFileError(manifest_path, f"column label is not 0/1 ({exc})",
                                  writer="cohort") from None
        self._chunks: dict[int, np.ndarray] = {}
        self.chunk = int(self.meta.get("chunk", CHUNK))

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def crop_size(self) -> int:
        return int(self.meta["crop_size"])

    def _chunk(self, number: int) -> np.ndarray:
        """Memory-map one chunk file (cached)."""
        if number not in self._chunks:
            path = self.path / "images" / f"{number:06d}.npy"
            with _cohort_file():
                chunk = load_npy(path, "cohort")
            if chunk.ndim != 3 or chunk.shape[1:] != (self.crop_size, self.crop_size):
                raise CohortFileError(path, f"holds shape {chunk.shape}, not (n, {self.crop_size}, "
                                      f"{self.crop_size}) crops", writer="cohort")
            if chunk.dtype != np.float32:
                raise CohortFileError(path, f"holds {chunk.dtype} values, not the float32 HU namd "
                                      "writes (overwritten with other data?)", writer="cohort")
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=(1, 2)))
            if len(bad):
                first = number * self.chunk + int(bad[0])
                raise CohortFileError(path, f"{len(bad)} crop(s) hold non-finite values (NaN or "
                                      f"infinity), the first crop_index {first}", writer="cohort")
            self._chunks[number] = chunk
        return self._chunks[number]

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Crops (n, H, W) float32 for the given crop indices, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.crop_size, self.crop_size), dtype=np.float32)
        for i, crop in enumerate(idx):
            out[i] = self._chunk(int(crop) // self.chunk)[int(crop) % self.chunk]
        return out

    def crops(self, split: str | None = None, kinds: Sequence[str] = KINDS) -> pd.DataFrame:
        """Manifest rows of one split (or all) restricted to the given kinds."""
        rows = self.manifest[self.manifest["kind"].isin(kinds)]
        return rows if split is None else rows[rows["split"] == split]

    def pairs(self, split: str | None = None) -> pd.DataFrame:
        """One row per baseline/follow-up pair: the baseline row's ids, label and EHR, plus
        `baseline_index`, `followup_index` and the follow-up diameters (`followup_SCT_*`)."""
        m = self.manifest if split is None else self.manifest[self.manifest["split"] == split]
        base = m[m["kind"] == "baseline"].set_index("pair_id")
        follow = m[m["kind"] == "followup"].set_index("pair_id")
        out = base.rename(columns={"crop_index": "baseline_index"})
        out["followup_index"] = follow.loc[out.index, "crop_index"].to_numpy()
        for col in ("SCT_LONG_DIA", "SCT_PERP_DIA", "SCT_PRE_ATT"):
            out[f"followup_{col}"] = follow.loc[out.index, col].to_numpy()
        return out.reset_index()

    @staticmethod
    def ehr(row: pd.Series | dict[str, Any]) -> EHR:
        """The validated EHR of a manifest row."""
        get = row.get if isinstance(row, dict) else row.__getitem__
        rec = f"{get('patient_id')}/{get('nodule_id')}"
        return EHR.from_mapping({f: get(f) for f in EHR_FIELDS}, record=rec)

    def summary(self, sample: int = 4096, seed: int = 0) -> dict[str, Any]:
        """Counts by split, kind and label, missingness per EHR field, image statistics,
        and the patient-level split check."""
        m = self.manifest
        counts = (m.assign(label=m["label"].astype("string").fillna("missing"))
                  .groupby(["split", "kind", "label"]).size())
        pick = np.random.default_rng(seed).choice(len(m), size=min(sample, len(m)), replace=False)
        imgs = self.images(np.sort(pick)) if len(m) else np.zeros((0, 1, 1), np.float32)
        return {
            "path": str(self.path), "meta": self.meta, "n_crops": len(m),
            "n_patients": int(m["patient_id"].nunique()),
            "n_pairs": int((m["kind"] == "baseline").sum()),
            "counts": {"/".join(map(str, k)): int(v) for k, v in counts.items()},
            "missing_fraction": {f: float(m[f].isna().mean()) for f in EHR_FIELDS},
            "image_stats": {"sampled": len(imgs), "min": float(imgs.min()) if len(imgs) else None,
                            "max": float(imgs.max()) if len(imgs) else None,
                            "mean": float(imgs.mean()) if len(imgs) else None,
                            "std": float(imgs.std()) if len(imgs) else None,
                            "units": self.meta.get("units")},
            "split_leaks": split_leaks(m),
        }
