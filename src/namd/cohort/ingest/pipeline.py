"""One entry point for `namd prepare`: read a source, cut its crops, write the cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namd.cohort.ingest.build import IdHasher, write_cohort
from namd.cohort.ingest.crop import CropGeometry
from namd.cohort.ingest.errors import ErrorLog
from namd.cohort.ingest.parallel import VolumeSettings, extract_all

SOURCES = ("nlst", "luna", "manifest", "authors")


def volume_settings(config: Any, redact: bool = False) -> VolumeSettings:
    """Crop geometry and series rules from the resolved config; `redact` (--hash-ids): crops
    are described without DICOM free text."""
    ing = config.ingest
    return VolumeSettings(CropGeometry(config.data.crop_size, config.data.pixel_spacing_mm),
                          ing.slice_spacing_tolerance, ing.max_tilt_degrees,
                          tuple(ing.avoid_kernels), ing.slice_agreement_mm, redact)


def prepare(source: str, options: dict[str, Any], config: Any, out: str | Path,
            on_error: str = "stop", hash_ids: bool = False, workers: int = 0,
            overwrite: bool = False,
            hasher: IdHasher | None = None) -> tuple[dict[str, Any], ErrorLog]:
    """Build the cohort at `out` from `source` ('nlst', 'luna', 'manifest', 'authors').

    `options` holds the source's inputs by their command-line names (prsn, abn, positions,
    images, exams, pairs, label_column; annotations; manifest; root, missing_value).
    `hash_ids` hashes the ids with `hasher` (default: a new IdHasher, made, and its key
    checked, before anything is read) and keeps DICOM free text out of the cohort.
    Returns the report written to OUT/ingest_report.json and the error log.
    """
    out = Path(out)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    hasher = (hasher or IdHasher()) if hash_ids else None
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    errors = ErrorLog(on_error)
    frame = config.ingest.coordinate_frame
    units, meta, name, results = "HU", {}, source, None
    if source == "nlst":
        from namd.cohort.ingest.nlst_pairing import read_nlst

        plan = read_nlst(options["prsn"], options["abn"], options["positions"], options["images"],
                         errors, config.ingest, options.get("exams"), options.get("pairs"),
                         options.get("label_column"))
    elif source == "luna":
        from namd.cohort.ingest.luna import read_luna

        plan = read_luna(options["annotations"], options["images"], errors, frame)
        name = plan.report["dialect"]
    elif source == "manifest":
        from namd.cohort.ingest.manifest import read_manifest

        plan = read_manifest(options["manifest"], errors, options.get("images"), frame)
    else:
        from namd.cohort.ingest.authors import UNITS, read_authors

        plan, results = read_authors(options["root"], errors, config.data.crop_size,
                                     tuple(options.get("missing_value") or ()))
        units, meta = UNITS, {"pixel_spacing_known": False}
    if results is None:
        results = extract_all(plan.requests, volume_settings(config, redact=hash_ids), workers,
                              errors)
    entries = plan.entries(results)
    summary = write_cohort(entries, results, out=out, config=config, source=name, errors=errors,
                           units=units, hasher=hasher,
                           overwrite=overwrite, report=plan.report, extra_meta=meta)
    return summary, errors
