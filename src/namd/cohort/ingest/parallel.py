"""Crop extraction in worker processes, one volume per task, with a progress bar.

Every source turns its table rows into `CropRequest`s; requests on the same image (and
series) form one task, so each volume is opened once. `--workers 0` runs in this process.
Errors come back as values and go through the --on-error policy in the parent.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from namd.cohort.ingest.crop import CropGeometry, Position, extract_crop, locate
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.volume import open_volume
from namd.run.provenance import progress


@dataclass(frozen=True)
class CropRequest:
    """One crop to cut: which image, where, and which table row asked for it."""

    key: str
    image: str
    position: Position
    series_uid: str | None = None
    file: str = ""
    line: int | None = None
    record: str = ""


@dataclass
class CropResult:
    """A crop and where it came from (no DICOM identifiers)."""

    key: str
    crop: np.ndarray
    flags: tuple[str, ...]
    slice_index: int
    centre: tuple[float, float, float]
    volume: str
    notes: tuple[str, ...]

    def provenance(self, image: str | None) -> str:
        """'IMAGE | DICOM series #3 ... | slice 15 | centre (x, y, z) mm | repaired: ...'."""
        parts = ([image] if image else []) + [self.volume]
        if self.slice_index >= 0:
            parts += [f"slice {self.slice_index}",
                      "centre ({:.1f}, {:.1f}, {:.1f}) mm".format(*self.centre)]
        if self.notes:
            parts.append("repaired: " + "; ".join(self.notes))
        return " | ".join(parts)


@dataclass(frozen=True)
class VolumeSettings:
    """What a worker needs besides the requests: crop geometry, the series rules, and whether
    the volume's description may quote DICOM free text (`redact`: not under --hash-ids)."""

    geometry: CropGeometry
    tolerance: float = 0.05
    max_tilt_degrees: float = 5.0
    avoid_kernels: tuple[str, ...] = ()
    agreement_mm: float = 10.0
    redact: bool = False


def _in_request(err: IngestError, req: CropRequest) -> IngestError:
    """Locate an error at the table row that asked for the crop, keeping the image's name."""
    reason = f"{err.file}: {err.reason}" if err.file and err.file != req.file else err.reason
    if not err.file:
        reason = f"{reason} (image {req.image})"
    return IngestError(reason, req.file or err.file, req.line, err.field, req.record, err.category)


def process_volume(image: str, series_uid: str | None, requests: list[CropRequest],
                   settings: VolumeSettings) -> tuple[list[CropResult], list[IngestError]]:
    """Open one volume and cut all its crops; returns the crops and the errors, never raises
    an IngestError (so one bad nodule or scan does not take the others with it)."""
    try:
        volume = open_volume(image, series_uid, settings.tolerance, settings.max_tilt_degrees,
                             settings.avoid_kernels, settings.redact)
    except IngestError as err:
        return [], [_in_request(err, r) for r in requests]
    results, errors = [], []
    for req in requests:
        try:
            k, centre = locate(volume, req.position, settings.agreement_mm)
            crop, flags = extract_crop(volume, k, centre, settings.geometry)
        except IngestError as err:
            errors.append(_in_request(err, req))
            continue
        except RuntimeError as exc:  # SimpleITK reports failures as RuntimeError
            detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unknown"
            errors.append(_in_request(IngestError(f"crop failed ({detail})", image), req))
            continue
        results.append(CropResult(req.key, crop, tuple(flags), k, tuple(float(c) for c in centre),
                                  volume.description, tuple(volume.notes)))
    return results, errors


def _group(requests: Iterable[CropRequest]) -> list[tuple[str, str | None, list[CropRequest]]]:
    """Requests grouped by (image, series), in order of first appearance."""
    groups: dict[tuple[str, str | None], list[CropRequest]] = {}
    for r in requests:
        groups.setdefault((r.image, r.series_uid), []).append(r)
    return [(image, uid, reqs) for (image, uid), reqs in groups.items()]


def _init_worker() -> None:
    """One ITK thread per worker process: parallelism comes from the processes."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def extract_all(requests: list[CropRequest], settings: VolumeSettings, workers: int,
                errors: ErrorLog) -> dict[str, CropResult]:
    """Cut every requested crop (in parallel when workers > 0); errors go to `errors`."""
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("internal: crop request keys must be unique")
    jobs = _group(requests)
    out: dict[str, CropResult] = {}
    bar = progress(total=len(requests), desc="crops", unit="crop")

    def collect(results: list[CropResult], errs: list[IngestError]) -> None:
        for res in results:
            out[res.key] = res
        bar.update(len(results) + len(errs))
        for err in errs:
            errors.report(err)

    try:
        if workers <= 0 or len(jobs) < 2:
            for image, uid, reqs in jobs:
                collect(*process_volume(image, uid, reqs, settings))
        else:
            _run_pool(jobs, settings, workers, collect)
    finally:
        bar.close()
    return out


def _run_pool(jobs: list[tuple[str, str | None, list[CropRequest]]], settings: VolumeSettings,
              workers: int, collect) -> None:
    """Run the jobs on a spawn-started process pool; on the first stopping error, cancel the rest."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        pending: set[Future] = {pool.submit(process_volume, image, uid, reqs, settings)
                                for image, uid, reqs in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                collect(*fut.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
