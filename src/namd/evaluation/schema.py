"""The version of RUN/eval/metrics.json (docs/metrics-schema.md) and its one reader for the
report and the model card: a file from an older namd is refused in one line naming the command
that recomputes it, never read with keys that have changed meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namd.run.contract import RunFileError, read_json

# 1: the first schema; 2: rows, sample folders and the variance block named after the methods of
# the table (namd.config.methods): namd_no_align -> no_align, namd_null_context -> null_context,
# variance.variant -> variance.method, variance_other_variants -> variance_other_methods
SCHEMA_VERSION = 2


def read_metrics(path: Path) -> dict[str, Any]:
    """RUN/eval/metrics.json, checked to be of this namd's schema."""
    data = read_json(path, "eval", keys=("schema_version", "rows"))
    if data["schema_version"] != SCHEMA_VERSION:
        raise RunFileError(path, f"schema {data['schema_version']}, written by another namd "
                           f"version (this one reads schema {SCHEMA_VERSION}: "
                           "docs/metrics-schema.md)",
                           f"recompute it: `namd evaluate --run {Path(path).parent.parent}`, "
                           "then `namd report`")
    return data
