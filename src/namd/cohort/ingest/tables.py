"""Reading the input CSV tables so that every later error can name its file, line and field.

Cells are read as text (pandas, no type guessing, no NA guessing) so that NLST missing codes
such as `.M` reach the parsers unchanged; column names are matched case-insensitively.
Columns a reader does not use are normal (NLST tables have hundreds), but one spelt almost
like an EHR field (`check_ehr_columns`) is an error: read as absent, it would turn every
value of that field into a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from namd.cohort.ehr import EHR, EHR_FIELDS, SYNONYMS, is_missing
from namd.cohort.ingest.crop import Position
from namd.cohort.ingest.errors import IngestError, as_ingest_error


@dataclass
class Table:
    """A CSV read as text, with its path and a lower-cased column lookup."""

    path: Path
    frame: pd.DataFrame

    @property
    def name(self) -> str:
        """The file name used in messages."""
        return str(self.path)

    def column(self, *aliases: str) -> str | None:
        """The actual name of the first column matching one of the aliases (any case)."""
        lower = {c.lower(): c for c in self.frame.columns}
        for alias in aliases:
            if alias.lower() in lower:
                return lower[alias.lower()]
        return None

    def require(self, *aliases: str) -> str:
        """Like `column`, but a missing column is an IngestError naming the file and column."""
        found = self.column(*aliases)
        if found is None:
            names = " or ".join(aliases)
            raise IngestError(f"missing column {names} (columns: {', '.join(self.frame.columns)})",
                              self.path, field=aliases[0], category="missing column")
        return found

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(line number, row as dict) for every data row; the header is line 1."""
        for i, row in enumerate(self.frame.to_dict("records")):
            yield i + 2, row


def read_table(path: str | Path) -> Table:
    """Read a CSV as text; an unreadable or empty file is an IngestError naming it."""
    path = Path(path)
    if not path.is_file():
        raise IngestError("file not found", path, category="unreadable file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                            encoding="utf-8-sig")  # Excel writes a BOM
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise IngestError(f"not a readable CSV ({str(exc).splitlines()[0]})", path,
                          category="unreadable file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    dup = frame.columns[frame.columns.str.lower().duplicated()].tolist()
    if dup:
        raise IngestError(f"duplicate column {dup[0]!r}", path, field=dup[0], category="invalid")
    return Table(path, frame)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def near_miss_distance(field: str) -> int:
    """How far a column may be from `field` and still be taken for a misspelling of it: 2, or 1
    for three-letter names (at 2, `age` would claim NLST's `race` and the manifest's `image`)."""
    return 1 if len(field) <= 3 else 2


def resembled_field(column: str) -> str | None:
    """The EHR field a column is a near-miss of (a synonym, or within the edit distance of
    `near_miss_distance` without being equal), compared case-insensitively; else None."""
    name = column.strip().lower()
    if name in SYNONYMS:
        return SYNONYMS[name]
    fields = {f.lower(): f for f in EHR_FIELDS}
    if name in fields:
        return None
    best = min(fields, key=lambda f: (edit_distance(name, f), f))
    return fields[best] if edit_distance(name, best) <= near_miss_distance(best) else None


def check_ehr_columns(table: Table, known: Collection[str] = ()) -> None:
    """Refuse a column that looks like a misspelt EHR field (IngestError naming both), unless
    it is one of the `known` columns the reader uses for something else."""
    used = {k.lower() for k in known}
    for column in table.frame.columns:
        field = None if column.lower() in used else resembled_field(column)
        if field is not None:
            raise IngestError(f"column {column!r} looks like the EHR field {field}, whose values "
                              f"would be read as missing; rename it to {field}, or drop it",
                              table.path, field=column, category="invalid")


def cell(row: dict[str, Any], column: str | None) -> str | None:
    """The stripped text of a cell, or None when the column is absent or the value missing."""
    if column is None:
        return None
    value = row.get(column)
    if value is None or is_missing(value):
        return None
    return str(value).strip()


def parse_float(table: Table, line: int, column: str, text: str | None,
                required: bool = True) -> float | None:
    """A finite float from a cell; errors name file, line and field."""
    if text is None:
        if required:
            raise IngestError("missing value", table.path, line, column, category="missing value")
        return None
    try:
        value = float(text)
    except ValueError:
        raise IngestError(f"not a number: {text!r}", table.path, line, column) from None
    if not math.isfinite(value):
        raise IngestError(f"not a finite number: {text!r}", table.path, line, column)
    return value


def parse_int(table: Table, line: int, column: str, text: str | None,
              required: bool = True, allowed: Sequence[int] | None = None) -> int | None:
    """An integer (written as `3` or `3.0`) from a cell, optionally one of `allowed` codes."""
    value = parse_float(table, line, column, text, required)
    if value is None:
        return None
    if value != int(value):
        raise IngestError(f"not a whole number: {text!r}", table.path, line, column)
    if allowed is not None and int(value) not in allowed:
        codes = ", ".join(str(a) for a in allowed)
        raise IngestError(f"unknown code {text!r} (allowed: {codes})", table.path, line, column,
                          category="unknown code")
    return int(value)


def parse_label(table: Table, line: int, column: str | None, text: str | None) -> int | None:
    """A 0/1 label; missing stays None, anything else is an error."""
    if text is None or column is None:
        return None
    return parse_int(table, line, column, text, allowed=(0, 1))


def parse_id(table: Table, line: int, column: str, text: str | None) -> str:
    """A required identifier; ids written as floats (`100012.0`) are normalised."""
    if text is None:
        raise IngestError("missing id", table.path, line, column, category="missing value")
    if text.endswith(".0") and text[:-2].isdigit():
        return text[:-2]
    return text


def ehr_from_row(table: Table, line: int, values: dict[str, Any], record: str) -> EHR:
    """A validated EHR from a row's values; a bad code names the file, line and field."""
    try:
        return EHR.from_mapping(values, record=record)
    except ValueError as exc:
        raise as_ingest_error(exc, table.path, line, record=record) from None


def position_from_row(table: Table, line: int, row: dict[str, Any], frame: str = "LPS",
                      x_col: str | None = None, y_col: str | None = None, z_col: str | None = None,
                      space_col: str | None = None, slice_col: str | None = None,
                      z_required: bool | None = None) -> Position:
    """A nodule position from x/y[/z] columns (world mm or voxel), maybe with a slice number.

    z is required when `z_required` says so (default: when the row gives no slice number).
    World coordinates in the RAS frame are turned into LPS (x and y negated).
    """
    space = (cell(row, space_col) or "world").lower()
    if space not in ("world", "voxel"):
        raise IngestError(f"unknown coordinate space {space!r} (world or voxel)", table.path, line,
                          space_col, category="unknown code")
    x = parse_float(table, line, x_col or "x", cell(row, x_col))
    y = parse_float(table, line, y_col or "y", cell(row, y_col))
    instance = parse_int(table, line, slice_col, cell(row, slice_col), required=False) if slice_col else None
    z = parse_float(table, line, z_col or "z", cell(row, z_col),
                    required=instance is None if z_required is None else z_required)
    if space == "world" and frame == "RAS":
        x, y = -x, -y
    return Position(x, y, z, space, instance)
