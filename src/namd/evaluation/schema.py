"""The version of RUN/eval/metrics.json (docs/metrics-schema.md) and its one reader for the
report and the model card: a file from an older namd is refused in one line naming the command
that recomputes it, never read with keys that have changed meaning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from namd.run.contract import RunFileError
from namd.run.readers import read_json

# 1: the first schema; 2: rows, sample folders and the variance block named after the methods of
# the table (namd.config.methods): namd_no_align -> no_align, namd_null_context -> null_context,
# variance.variant -> variance.method, variance_other_variants -> variance_other_methods;
# 3 (issue 26): the known_futures block, image_quality's evaluator_feature_distance and named
# LPIPS / FID backbones, and growth sized by namd.evaluation.measure (the equivalent diameter of
# the segmented nodule; before, tissue above a threshold near the centre); 4: the readout block
# (namd evaluate scores the radiologist's readout; the report measured every crop again before)
SCHEMA_VERSION = 4


# what every table of the metrics states besides its rows (the report's and the model card's)
TABLE_FIELDS = ("split", "n_test", "n_malignant", "k")
METRIC_KEYS = ("auroc", "auprc")  # what an "ok" row must give as {"mean": a number in [0, 1]}


def read_metrics(path: Path, need: tuple[str, ...] = ()) -> dict[str, Any]:
    """RUN/eval/metrics.json, checked to be of this namd's schema and to mean what it says: no
    NaN or infinity anywhere (namd evaluate writes none), every row named with a status, every
    "ok" row with its K and finite AUROC / AUPRC, and the top-level fields `need` (e.g.
    TABLE_FIELDS) present with sensible values; else a RunFileError naming the key."""
    data = read_json(path, "eval", keys=("schema_version", "rows"))
    if data["schema_version"] != SCHEMA_VERSION:
        raise RunFileError(path, f"schema {data['schema_version']}, written by another namd "
                           f"version (this one reads schema {SCHEMA_VERSION}: "
                           "docs/metrics-schema.md)", _remedy(path))
    bad = _non_finite(data)
    if bad is not None:
        raise RunFileError(path, f"{bad} is not a finite number", _remedy(path))
    _check_rows(path, data["rows"])
    require_fields(path, data, need)
    return data


def _remedy(path: Path) -> str:
    """What to do about a metrics.json that cannot be used."""
    return f"recompute it: `namd evaluate --run {Path(path).parent.parent}`, then `namd report`"


def _non_finite(value: Any, where: str = "") -> str | None:
    """The key path of the first NaN or infinity in a parsed JSON value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'} ({value})"
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        found = _non_finite(item, f"{where}[{key}]" if isinstance(key, int) else
                            f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rows(path: Path, rows: Any) -> None:
    """Every row an object with a name and a status; an "ok" row with an integer k >= 1 and
    finite AUROC / AUPRC means in [0, 1]: what the tables print as its result."""
    if not isinstance(rows, list):
        raise RunFileError(path, f"rows is a {type(rows).__name__}, not a list", _remedy(path))
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) \
                or not isinstance(row.get("status"), str):
            raise RunFileError(path, f"rows[{i}] is not an object with a name and a status",
                               _remedy(path))
        if row["status"] != "ok":
            continue
        where = f"row {row['name']} (status ok)"
        k = row.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RunFileError(path, f"{where}: k is {k!r}, not a whole number >= 1", _remedy(path))
        for key in METRIC_KEYS:
            block = row.get(key)
            mean = block.get("mean") if isinstance(block, dict) else None
            if not _is_number(mean) or not 0.0 <= mean <= 1.0:
                raise RunFileError(path, f"{where}: {key}.mean is {mean!r}, not a number in "
                                   "[0, 1]", _remedy(path))


def require_fields(path: Path, data: dict[str, Any], need: tuple[str, ...]) -> None:
    """RunFileError when a top-level field a table states (TABLE_FIELDS) is absent or not what
    it should be: a split name, at least one nodule, malignant ones among them, K >= 1."""
    n_test = data.get("n_test")
    checks = {"split": lambda v: isinstance(v, str) and bool(v),
              "n_test": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "n_malignant": lambda v: (isinstance(v, int) and not isinstance(v, bool)
                                        and 0 <= v <= (n_test if isinstance(n_test, int) else v)),
              "k": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1}
    for name in need:
        if name not in data:
            raise RunFileError(path, f"lacks {name}, which the tables state", _remedy(path))
        if not checks.get(name, lambda v: v is not None)(data[name]):
            raise RunFileError(path, f"{name} is {data[name]!r}, not a valid value",
                               _remedy(path))
