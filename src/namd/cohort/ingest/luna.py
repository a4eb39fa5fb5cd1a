"""LUNA16, LUNA25 and DLCS annotation CSVs -> unpaired crops for the prior.

The dialect is recognised from the columns (docs/data-sources.md):
  LUNA16: seriesuid, coordX, coordY, coordZ, diameter_mm; images `<seriesuid>.mhd` (+.raw)
          anywhere under the image root (subset0..9).
  LUNA25: PatientID, SeriesInstanceUID, CoordX, CoordY, CoordZ, AnnotationID, NoduleID,
          label, Age_at_StudyDate, Gender; images `<SeriesInstanceUID>.mha`.
  DLCS:   patient-id, nodule_id, ct_nifti_file, coordX, coordY, coordZ, w, h, d, Malignant_lbl;
          images at `ct_nifti_file` relative to the image root.
Coordinates are world millimetres in the frame SimpleITK reports for the image (LPS).
Diameters are not mapped to SCT_LONG_DIA (a different measurement); they go to provenance,
as numbers (a cell that is not one is an error, never text copied into the cohort).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from namd.cohort.ingest.build import Entry, Plan
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.parallel import CropRequest
from namd.cohort.ingest.tables import (
    Table,
    cell,
    ehr_from_row,
    parse_float,
    parse_id,
    parse_label,
    position_from_row,
    read_table,
)
from namd.cohort.ingest.volume import IMAGE_SUFFIXES

GENDER_WORDS = {"male": 1, "m": 1, "1": 1, "female": 2, "f": 2, "2": 2}


def find_images(root: Path) -> dict[str, Path]:
    """Map '<name>' -> path for every image file (and DICOM folder name) under `root`."""
    index: dict[str, Path] = {}
    for d, dirs, names in os.walk(root):
        for name in names:
            for suffix in IMAGE_SUFFIXES:
                if name.lower().endswith(suffix) and not name.lower().endswith(".raw"):
                    index.setdefault(name[: -len(suffix)], Path(d) / name)
        for sub in dirs:
            index.setdefault(sub, Path(d) / sub)
    return index


def _dialect(table: Table) -> str:
    """'dlcs', 'luna25' or 'luna16' from the columns present."""
    if table.column("ct_nifti_file"):
        return "dlcs"
    if table.column("SeriesInstanceUID") and table.column("AnnotationID", "label"):
        return "luna25"
    return "luna16"


def _gender(table: Table, line: int, col: str | None, row: dict[str, Any]) -> int | None:
    """LUNA25's 'Male'/'Female' (or NLST codes) -> NLST gender code."""
    text = cell(row, col)
    if text is None:
        return None
    if text.lower() not in GENDER_WORDS:
        raise IngestError(f"unknown gender {text!r} (Male/Female, M/F, 1/2)", table.path, line, col,
                          category="unknown code")
    return GENDER_WORDS[text.lower()]


def read_luna(annotations: str | Path, images: str | Path, errors: ErrorLog,
              frame: str = "LPS") -> Plan:
    """Entries and crop requests for every annotation row (bad rows go to `errors`)."""
    table = read_table(annotations)
    root = Path(images)
    if not root.is_dir():
        raise IngestError("image folder not found", root, category="unreadable file")
    dialect = _dialect(table)
    uid_col = table.column("seriesuid", "SeriesInstanceUID")
    file_col = table.column("ct_nifti_file")
    if dialect != "dlcs" and uid_col is None:
        table.require("seriesuid", "SeriesInstanceUID")
    cols = {"x": table.require("coordX"), "y": table.require("coordY"), "z": table.require("coordZ")}
    patient_col = table.column("patient-id", "PatientID", "patient_id")
    nodule_col = table.column("AnnotationID", "nodule_id")
    label_col = table.column("label", "Malignant_lbl", "malignancy")
    age_col, gender_col = table.column("Age_at_StudyDate", "age"), table.column("Gender")
    size_col = table.column("diameter_mm")
    index = find_images(root) if file_col is None else {}
    entries, requests, seen, counter = [], [], {}, {}
    for line, row in table.rows():
        try:
            uid = parse_id(table, line, uid_col, cell(row, uid_col)) if uid_col else None
            if file_col:
                rel = parse_id(table, line, file_col, cell(row, file_col))
                image = root / rel
            else:
                if uid not in index:
                    raise IngestError(f"no image named {uid} (.mhd/.mha/.nii.gz or a DICOM folder) "
                                      f"under {root}", table.path, line, uid_col, category="missing image")
                image = index[uid]
            patient = parse_id(table, line, patient_col, cell(row, patient_col)) if patient_col else (uid or str(image))
            counter[patient] = counter.get(patient, 0) + 1
            nodule = (parse_id(table, line, nodule_col, cell(row, nodule_col)) if nodule_col
                      else f"n{counter[patient]}")
            if (patient, nodule) in seen:
                raise IngestError(f"duplicate nodule id {patient}/{nodule} (first on line "
                                  f"{seen[(patient, nodule)]})", table.path, line,
                                  nodule_col or uid_col, category="duplicate id")
            seen[(patient, nodule)] = line
            record = f"{patient}/{nodule}"
            position = position_from_row(table, line, row, frame, cols["x"], cols["y"], cols["z"],
                                         z_required=True)
            label = parse_label(table, line, label_col, cell(row, label_col))
            ehr = ehr_from_row(table, line, {"age": cell(row, age_col),
                                             "gender": _gender(table, line, gender_col, row)}, record)
            size = parse_float(table, line, size_col, cell(row, size_col), required=False)
        except IngestError as err:
            errors.report(err.within(table.path, line))
            continue
        key = f"row{line}"
        is_dicom_dir = image.is_dir()
        entries.append(Entry(key, patient, nodule, "unpaired", 0, label, ehr, image=_rel(image, root),
                             record=f"{table.name} line {line}",
                             note=f"diameter {size:g} mm" if size is not None else ""))
        requests.append(CropRequest(key, str(image), position,
                                    series_uid=uid if is_dicom_dir and uid else None,
                                    file=table.name, line=line, record=record))
    return Plan.fixed(requests, entries, {"dialect": dialect, "annotation_rows": len(table.frame)})


def _rel(path: Path, root: Path) -> str:
    """A path relative to the image root, for provenance."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
