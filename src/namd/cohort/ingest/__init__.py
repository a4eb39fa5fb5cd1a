"""Real data -> cohort: DICOM / NIfTI / MHA volumes, nodule-centred crops, and the sources
(NLST tables, LUNA16 / LUNA25 / DLCS annotations, a generic manifest, the authors' format).

Entry point: `prepare(source, options, config, out, ...)` (the `namd prepare` command).
Rules and CSV columns: docs/data-sources.md. Imports are lazy so that worker processes,
which only cut crops, do not load pandas and the table readers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ErrorLog", "IngestError", "SOURCES", "prepare"]


def __getattr__(name: str) -> Any:
    """Load `prepare`, `SOURCES`, `ErrorLog` and `IngestError` on first use."""
    if name in ("prepare", "SOURCES"):
        from namd.cohort.ingest import pipeline

        return getattr(pipeline, name)
    if name in ("ErrorLog", "IngestError"):
        from namd.cohort.ingest import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
