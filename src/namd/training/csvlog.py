"""The trainer's log.csv: one row per optimizer step and validation, every loss term a column."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from namd.run.provenance import atomic_write_text


class CsvLog:
    """Append-only CSV whose header widens when a later row brings a new column; written by the
    main process only (`enabled`)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._fields: list[str] | None = None  # the file's header, read once

    def _header(self) -> list[str]:
        """The log's columns (read from the file the first time; empty for a new log)."""
        if self._fields is None:
            self._fields = []
            if self.path.exists():
                with self.path.open(newline="") as fh:
                    self._fields = next(csv.reader(fh), [])
        return self._fields

    def append(self, row: dict[str, float | int | str]) -> None:
        """Append one row (header from the first row, widened when a later row brings a new
        column, e.g. a validation-only metric from `val_metrics`)."""
        if not self.enabled:
            return
        fields = list(self._header())
        new = not fields
        extra = [k for k in row if k not in fields]
        if extra and not new:  # rewrite the log once with the wider header (atomically)
            with self.path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            self._rewrite(fields + extra, rows)
        fields += extra
        self._fields = fields
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def truncate(self, step: int) -> None:
        """Drop rows after the resumed step (and a row torn by a kill) so the log reads like
        one run; rewritten atomically, so a kill here loses nothing."""
        if not self.path.exists() or not self.enabled:
            return
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [r for r in reader if None not in r.values() and int(float(r["step"])) <= step]
            fields = list(reader.fieldnames or [])
        self._rewrite(fields, rows)

    def clear(self) -> None:
        """Remove the log of an earlier run (a fresh start)."""
        if self.enabled and self.path.exists():
            self.path.unlink()
        self._fields = None

    def _rewrite(self, fields: list[str], rows: list[dict[str, str]]) -> None:
        """The whole log with `fields` as its header, atomically."""
        self._fields = list(fields)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())
