"""NLST: participant table (prsn), abnormality table (sctabn / ctab), nodule positions, exams.

Codes follow the NLST data dictionaries (docs/reference-facts.md, section 1; EHR codes are
validated by namd.cohort.ehr). Only abnormalities with sct_ab_desc = 51 (non-calcified
nodule or mass >= 4 mm) become crops. The public prsn table has no diagemph and no fam*
columns: absent columns are missing values, never "No". A column of the prsn or abnormality
table spelt almost like an EHR field (`sct_long_dai`) is an error (tables.check_ehr_columns).

Positions: NLST gives only lobe and sct_slice_num, so in-plane centres come from a positions
CSV keyed by (pid, study_yr, sct_ab_num) with LUNA16-style coordX, coordY[, coordZ] (world
mm) or x, y with space=voxel, and optional seriesuid, diameter_mm (a number). The slice is
sct_slice_num matched to the DICOM InstanceNumber when known (checked against coordZ if both
are given), else the slice nearest coordZ. Exams: an exams CSV (pid, study_yr, path[,
series_uid]) or the folder IMAGES/<pid>/T<study_yr>. Pairing and labels: see nlst_pairing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from namd.cohort.ehr import NODULE_FIELDS, PATIENT_FIELDS
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.tables import (
    Table,
    cell,
    check_ehr_columns,
    ehr_from_row,
    parse_float,
    parse_id,
    parse_int,
    parse_label,
    position_from_row,
    read_table,
)

NODULE_DESC = 51
AB_DESC_CODES = tuple(range(51, 66))
STUDY_YEARS = (0, 1, 2)
CAN_SCR = (0, 1, 2, 3, 4)
CANCYR = tuple(range(8))
SLICE_MISSING = 999
ABN_KEYS = ("pid", "study_yr", "sct_ab_num")


@dataclass
class Participant:
    """One prsn row: the patient EHR values and the cancer outcome fields."""

    pid: str
    line: int
    values: dict[str, str | None]
    can_scr: int | None
    cancyr: int | None


@dataclass(frozen=True)
class Nodule:
    """One sct_ab_desc = 51 abnormality of one study year, and where to find it."""

    pid: str
    year: int
    ab: int
    line: int
    ehr: Any
    lobe: int | None
    slice_num: int | None
    user_label: int | None = None
    position: Any = None
    image: str = ""
    image_text: str = ""
    series_uid: str | None = None
    note: str = ""
    pos_line: int | None = None

    @property
    def key(self) -> str:
        """Crop key of this nodule."""
        return f"{self.pid}:T{self.year}:{self.ab}"

    @property
    def ident(self) -> str:
        """Id within the participant: T<study_yr>-<sct_ab_num>."""
        return f"T{self.year}-{self.ab}"


def read_participants(path: str | Path, errors: ErrorLog) -> tuple[Table, dict[str, Participant]]:
    """The prsn table: patient fields validated, can_scr / cancyr checked for consistency."""
    table = read_table(path)
    pid_col = table.require("pid")
    can_col, yr_col = table.column("can_scr"), table.column("cancyr")
    check_ehr_columns(table, known=("pid", "can_scr", "cancyr"))
    out: dict[str, Participant] = {}
    for line, row in table.rows():
        try:
            pid = parse_id(table, line, pid_col, cell(row, pid_col))
            if pid in out:
                raise IngestError(f"duplicate pid {pid} (first on line {out[pid].line})", table.path,
                                  line, pid_col, category="duplicate id")
            values = {f: cell(row, table.column(f)) for f in PATIENT_FIELDS}
            ehr_from_row(table, line, values, f"pid {pid}")
            can_scr = parse_int(table, line, can_col, cell(row, can_col), False, CAN_SCR) if can_col else None
            cancyr = parse_int(table, line, yr_col, cell(row, yr_col), False, CANCYR) if yr_col else None
            if can_scr == 0 and cancyr is not None:
                raise IngestError(f"cancyr {cancyr} given but can_scr 0 (no cancer)", table.path, line,
                                  yr_col, category="invalid")
            out[pid] = Participant(pid, line, values, can_scr, cancyr)
        except IngestError as err:
            errors.report(err.within(table.path, line))
    return table, out


def read_abnormalities(path: str | Path, people: dict[str, Participant], errors: ErrorLog,
                       label_column: str | None = None) -> tuple[dict[str, Nodule], dict[str, int]]:
    """The abnormality table: sct_ab_desc 51 rows become nodules with validated EHR."""
    table = read_table(path)
    check_ehr_columns(table, known=(*ABN_KEYS, "sct_ab_desc", "sct_slice_num", label_column or ""))
    cols = {k: table.require(k) for k in (*ABN_KEYS, "sct_ab_desc", *[f.lower() for f in NODULE_FIELDS])}
    slice_col = table.column("sct_slice_num")
    label_col = table.require(label_column) if label_column else None
    nodules: dict[str, Nodule] = {}
    seen: dict[tuple, int] = {}
    counts = {"abnormality_rows": 0, "not_nodules": 0}
    for line, row in table.rows():
        counts["abnormality_rows"] += 1
        try:
            pid = parse_id(table, line, cols["pid"], cell(row, cols["pid"]))
            year = parse_int(table, line, cols["study_yr"], cell(row, cols["study_yr"]), allowed=STUDY_YEARS)
            ab = parse_int(table, line, cols["sct_ab_num"], cell(row, cols["sct_ab_num"]))
            if (pid, year, ab) in seen:
                raise IngestError(f"duplicate abnormality (pid {pid}, study_yr {year}, sct_ab_num {ab}; "
                                  f"first on line {seen[(pid, year, ab)]})", table.path, line,
                                  cols["sct_ab_num"], category="duplicate id")
            seen[(pid, year, ab)] = line
            desc = parse_int(table, line, cols["sct_ab_desc"], cell(row, cols["sct_ab_desc"]),
                             allowed=AB_DESC_CODES)
            if desc != NODULE_DESC:
                counts["not_nodules"] += 1
                continue
            if pid not in people:
                raise IngestError(f"pid {pid} is not in the participant table", table.path, line,
                                  cols["pid"], category="missing participant")
            values = {**people[pid].values, **{f: cell(row, table.column(f)) for f in NODULE_FIELDS}}
            ehr = ehr_from_row(table, line, values, f"pid {pid} T{year} ab {ab}")
            slice_num = parse_int(table, line, slice_col, cell(row, slice_col), False) if slice_col else None
            label = parse_label(table, line, label_col, cell(row, label_col))
        except IngestError as err:
            errors.report(err.within(table.path, line))
            continue
        nodule = Nodule(pid, year, ab, line, ehr, ehr.SCT_EPI_LOC,
                        None if slice_num in (None, SLICE_MISSING) else slice_num, label)
        nodules[nodule.key] = nodule
    return nodules, counts


def read_exams(path: str | Path | None, images: Path, errors: ErrorLog) -> dict[tuple[str, int], tuple]:
    """(pid, study_yr) -> (exam path, path as written, series_uid) from the exams CSV."""
    if path is None:
        return {}
    table = read_table(path)
    pid_col, yr_col, path_col = (table.require(c) for c in ("pid", "study_yr", "path"))
    uid_col = table.column("series_uid", "seriesuid")
    out: dict[tuple[str, int], tuple] = {}
    for line, row in table.rows():
        try:
            key = (parse_id(table, line, pid_col, cell(row, pid_col)),
                   parse_int(table, line, yr_col, cell(row, yr_col), allowed=STUDY_YEARS))
            if key in out:
                raise IngestError(f"duplicate exam pid {key[0]} study_yr {key[1]}", table.path, line,
                                  yr_col, category="duplicate id")
            text = parse_id(table, line, path_col, cell(row, path_col))
            full = Path(text) if Path(text).is_absolute() else images / text
            out[key] = (full, text, cell(row, uid_col))
        except IngestError as err:
            errors.report(err.within(table.path, line))
    return out


def read_positions(path: str | Path, nodules: dict[str, Nodule], exams: dict[tuple, tuple],
                   images: Path, errors: ErrorLog, frame: str = "LPS") -> dict[str, Nodule]:
    """Attach a position, exam and series to the nodules named in the positions CSV."""
    table = read_table(path)
    keys = [table.require(k) for k in ABN_KEYS]
    x_col, y_col = table.require("coordX", "x"), table.require("coordY", "y")
    z_col, space_col = table.column("coordZ", "z"), table.column("space")
    uid_col, size_col = table.column("seriesuid", "series_uid"), table.column("diameter_mm")
    placed: dict[str, Nodule] = {}
    seen: dict[str, int] = {}
    for line, row in table.rows():
        try:
            pid = parse_id(table, line, keys[0], cell(row, keys[0]))
            year = parse_int(table, line, keys[1], cell(row, keys[1]), allowed=STUDY_YEARS)
            ab = parse_int(table, line, keys[2], cell(row, keys[2]))
            key = f"{pid}:T{year}:{ab}"
            if key not in nodules:
                raise IngestError(f"no nodule (sct_ab_desc 51) pid {pid} study_yr {year} sct_ab_num "
                                  f"{ab} in the abnormality table", table.path, line, keys[2],
                                  category="unknown nodule")
            if key in seen:
                raise IngestError(f"duplicate position for pid {pid} T{year} ab {ab} (first on line "
                                  f"{seen[key]})", table.path, line, keys[2], category="duplicate id")
            seen[key] = line
            nodule = nodules[key]
            pos = position_from_row(table, line, row, frame, x_col, y_col, z_col, space_col,
                                    z_required=nodule.slice_num is None)
            pos = replace(pos, instance=nodule.slice_num)
            image, text, exam_uid = exams.get((pid, year), (images / pid / f"T{year}",
                                                             f"{pid}/T{year}", None))
            if not Path(image).exists():
                raise IngestError(f"exam not found: {image}", table.path, line, "path",
                                  category="missing image")
            uid = cell(row, uid_col) or exam_uid
            size = parse_float(table, line, size_col, cell(row, size_col), required=False)
            placed[key] = replace(nodule, position=pos, image=str(image), image_text=text,
                                  series_uid=uid,
                                  note=f"diameter {size:g} mm" if size is not None else "",
                                  pos_line=line)
        except IngestError as err:
            errors.report(err.within(table.path, line))
    return placed
