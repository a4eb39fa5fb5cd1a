"""A generic CSV manifest for any longitudinal cohort -> pairs and unpaired crops.

One row per nodule observation (docs/data-sources.md has the full table):
  patient_id, nodule_id, timepoint        required; timepoint is a whole number (0 = first)
  image                                   DICOM folder or file, NIfTI, MHA/MHD; relative to
                                          the manifest's folder or --images
  x, y[, z]                               nodule centre; `space` world (mm, LPS; default) or
                                          voxel (column, row, slice of the file, from 0)
  slice_number                            optional DICOM InstanceNumber of the slice to use
  series_uid                              optional: which series of a DICOM folder
  label, split                            optional 0/1 and train/val/test (constant per patient)
  SCT_PRE_ATT ... famchild                optional EHR fields (NLST codes; missing codes allowed);
                                          a column spelt almost like one is an error
Pairing: the observations of one (patient_id, nodule_id), sorted by timepoint, form a pair
from each one to the next; a nodule seen once becomes an unpaired crop. A pair's label is
the label of its rows (they must agree when both are given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namd.cohort.ehr import EHR_FIELDS
from namd.cohort.ingest.build import Entry, Plan
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.parallel import CropRequest
from namd.cohort.ingest.tables import (
    Table,
    cell,
    check_ehr_columns,
    ehr_from_row,
    parse_id,
    parse_int,
    parse_label,
    position_from_row,
    read_table,
)
from namd.cohort.store import SPLITS

REQUIRED = ("patient_id", "nodule_id", "timepoint", "image", "x", "y")
OPTIONAL = ("z", "space", "slice_number", "series_uid", "label", "split")


def _observation(table: Table, line: int, row: dict[str, Any], root: Path,
                 frame: str) -> dict[str, Any]:
    """Parse one manifest row (raises IngestError naming line and field)."""
    col = table.column
    patient = parse_id(table, line, col("patient_id"), cell(row, col("patient_id")))
    nodule = parse_id(table, line, col("nodule_id"), cell(row, col("nodule_id")))
    timepoint = parse_int(table, line, col("timepoint"), cell(row, col("timepoint")))
    if timepoint < 0:
        raise IngestError(f"timepoint must be >= 0, got {timepoint}", table.path, line, col("timepoint"))
    image_text = cell(row, col("image"))
    if image_text is None:
        raise IngestError("missing image path", table.path, line, col("image"), category="missing value")
    image = Path(image_text) if Path(image_text).is_absolute() else root / image_text
    if not image.exists():
        raise IngestError(f"image not found: {image}", table.path, line, col("image"),
                          category="missing image")
    split = cell(row, col("split"))
    if split is not None and split not in SPLITS:
        raise IngestError(f"unknown split {split!r} (train, val, test)", table.path, line,
                          col("split"), category="unknown code")
    record = f"{patient}/{nodule}/t{timepoint}"
    ehr_values = {f: cell(row, col(f)) for f in EHR_FIELDS}
    return {
        "line": line, "patient": patient, "nodule": nodule, "timepoint": timepoint,
        "image": image, "image_text": image_text, "record": record, "split": split,
        "series_uid": cell(row, col("series_uid")),
        "position": position_from_row(table, line, row, frame, col("x"), col("y"), col("z"),
                                      col("space"), col("slice_number")),
        "label": parse_label(table, line, col("label"), cell(row, col("label"))),
        "ehr": ehr_from_row(table, line, ehr_values, record),
    }


def _check_patient_splits(table: Table, obs: list[dict[str, Any]], errors: ErrorLog) -> list[dict]:
    """Every patient's rows agree on the split; all rows have one or none has."""
    first: dict[str, dict[str, Any]] = {}
    kept = []
    for o in obs:
        ref = first.setdefault(o["patient"], o)
        if o["split"] != ref["split"]:
            errors.report(IngestError(f"patient {o['patient']} has split {o['split']!r} here and "
                                      f"{ref['split']!r} on line {ref['line']}", table.path,
                                      o["line"], table.column("split"), o["record"], "invalid"))
            continue
        kept.append(o)
    given = {o["split"] is not None for o in kept}
    if len(given) > 1:
        raise IngestError("some rows have a split and others do not: give it for every row or "
                          "for none", table.path, field=table.column("split"))
    return kept


def _drop_tainted(obs: list[dict[str, Any]], tainted: set[tuple], errors: ErrorLog,
                  table: Table) -> list[dict[str, Any]]:
    """Leave out every observation of a nodule that lost one to --on-error skip, so that no
    pair silently spans a skipped timepoint."""
    kept = []
    for o in obs:
        if (o["patient"], o["nodule"]) in tainted:
            errors.note(o["record"], "another observation of this nodule was skipped",
                        "nodule incomplete", table.name)
            continue
        kept.append(o)
    return kept


def _pair_label(table: Table, a: dict[str, Any], b: dict[str, Any]) -> int | None:
    """The label of a pair: its rows' label, which must agree when both are given."""
    if a["label"] is not None and b["label"] is not None and a["label"] != b["label"]:
        raise IngestError(f"label {b['label']} differs from label {a['label']} on line {a['line']} "
                          f"of the same nodule", table.path, b["line"], table.column("label"),
                          b["record"])
    return a["label"] if a["label"] is not None else b["label"]


def read_manifest(path: str | Path, errors: ErrorLog, images: str | Path | None = None,
                  frame: str = "LPS") -> Plan:
    """Entries (pairs and unpaired crops) and crop requests of a generic manifest."""
    table = read_table(path)
    for name in REQUIRED:
        table.require(name)
    check_ehr_columns(table, known=REQUIRED + OPTIONAL)
    root = Path(images) if images is not None else table.path.parent
    obs, seen, tainted = [], {}, set()
    for line, row in table.rows():
        try:
            o = _observation(table, line, row, root, frame)
            key = (o["patient"], o["nodule"], o["timepoint"])
            if key in seen:
                raise IngestError(f"duplicate observation {o['record']} (first on line {seen[key]})",
                                  table.path, line, table.column("timepoint"), o["record"],
                                  "duplicate id")
            seen[key] = line
            obs.append(o)
        except IngestError as err:
            errors.report(err.within(table.path, line))
            tainted.add((cell(row, table.column("patient_id")), cell(row, table.column("nodule_id"))))
    obs = _drop_tainted(_check_patient_splits(table, obs, errors), tainted, errors, table)
    by_nodule: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in obs:
        by_nodule.setdefault((o["patient"], o["nodule"]), []).append(o)
    entries = []
    for (patient, nodule), series in by_nodule.items():
        series.sort(key=lambda o: o["timepoint"])
        entries += _nodule_entries(table, patient, nodule, series, errors)
    requests = [CropRequest(f"row{o['line']}", str(o["image"]), o["position"], o["series_uid"],
                            table.name, o["line"], o["record"]) for o in obs]
    return Plan.fixed(requests, entries, {"manifest_rows": len(table.frame)})


def _entry(o: dict[str, Any], kind: str, label: int | None, pair_id: str = "") -> Entry:
    """The manifest row of one observation in the role `kind`."""
    return Entry(f"row{o['line']}", o["patient"], o["nodule"], kind, o["timepoint"], label,
                 o["ehr"], pair_id=pair_id, split=o["split"], image=o["image_text"],
                 record=o["record"])


def _nodule_entries(table: Table, patient: str, nodule: str, series: list[dict[str, Any]],
                    errors: ErrorLog) -> list[Entry]:
    """Consecutive pairs of one nodule's observations, or one unpaired crop."""
    if len(series) == 1:
        o = series[0]
        return [_entry(o, "unpaired", o["label"])]
    out = []
    for a, b in zip(series, series[1:], strict=False):
        try:
            label = _pair_label(table, a, b)
        except IngestError as err:
            errors.report(err)
            continue
        pair_id = f"{patient}/{nodule}/t{a['timepoint']}-t{b['timepoint']}"
        out += [_entry(a, "baseline", label, pair_id), _entry(b, "followup", label, pair_id)]
    return out
