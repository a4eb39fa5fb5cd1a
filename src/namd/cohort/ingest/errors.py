"""Bad input, named precisely, and the --on-error policy that stops or skips it.

Every problem with an input is an `IngestError` whose message names the file, the line
(CSV line number, header = line 1) and the field. With the default policy `stop` the first
one ends the command before anything is written; with `skip` the record is left out, the
command goes on, and every skipped record is listed (with its reason) in the output.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from namd.run.provenance import atomic_write_text

POLICIES = ("stop", "skip")
SKIPPED_CSV = "skipped.csv"


class IngestError(ValueError):
    """An input record that cannot be used; the message names the file, line and field."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None, record: str = "", category: str = "invalid"):
        self.reason = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.record = record
        self.category = category
        super().__init__(self._format())

    def _format(self) -> str:
        """'ctab.csv line 4, field sct_margins: code 5 not allowed' (parts that are known)."""
        where = []
        if self.file:
            where.append(self.file if self.line is None else f"{self.file} line {self.line}")
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f"field {self.field}")
        if self.record and not where:
            where.append(f"record {self.record}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with all parts, so errors raised in worker processes arrive intact."""
        return (type(self), (self.reason, self.file, self.line, self.field, self.record,
                             self.category))

    def within(self, file: str | Path | None = None, line: int | None = None,
               field: str | None = None, record: str = "") -> IngestError:
        """A copy that fills in the parts this error does not know yet."""
        return IngestError(self.reason, self.file or file, self.line if self.line is not None else line,
                           self.field or field, self.record or record, self.category)


def as_ingest_error(exc: Exception, file: str | Path | None = None, line: int | None = None,
                    field: str | None = None, record: str = "") -> IngestError:
    """Turn an EHRError / ValueError raised while reading a record into an IngestError."""
    if isinstance(exc, IngestError):
        return exc.within(file, line, field, record)
    message = str(exc)
    # EHRError messages start with "record X: field Y ..."; keep the field part only.
    if message.startswith("record ") and ": " in message:
        message = message.split(": ", 1)[1]
        if message.startswith("field ") and field is None:
            field, _, message = message[len("field "):].partition(" ")
            message = message.strip()
    return IngestError(message, file, line, field, record)


@dataclass
class Skipped:
    """One record left out under --on-error skip."""

    file: str
    line: int | None
    field: str
    record: str
    category: str
    reason: str


class ErrorLog:
    """Applies the --on-error policy: raise at once (`stop`) or remember and go on (`skip`)."""

    def __init__(self, policy: str = "stop"):
        if policy not in POLICIES:
            raise ValueError(f"--on-error must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.skipped: list[Skipped] = []

    def report(self, error: IngestError) -> None:
        """Stop on the error, or record it as skipped."""
        if self.policy == "stop":
            raise error
        self.skipped.append(Skipped(error.file or "", error.line, error.field or "",
                                    error.record, error.category, error.reason))

    def note(self, record: str, reason: str, category: str, file: str = "") -> None:
        """Record a consequence of an earlier skip (e.g. the partner crop of a skipped one)."""
        self.skipped.append(Skipped(file, None, "", record, category, reason))

    def counts(self) -> dict[str, int]:
        """Number of skipped records by category."""
        return dict(Counter(s.category for s in self.skipped))

    def to_csv(self, redact: bool = False, hash_path: Callable[[str], str] | None = None) -> str:
        """The skipped records as CSV text (file, line, field, record, category, reason).

        `redact` (with --hash-ids) leaves out record and reason, which may hold the ids;
        `hash_path` (`namd prepare --hash-ids` gives it) writes each file as a keyed hash, since
        its folders may be named after a patient (with the run_info.json hasher, the hash of
        that path in the recorded command)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "line", "field", "record", "category", "reason"])
        for s in self.skipped:
            file = hash_path(s.file) if hash_path and s.file else s.file
            writer.writerow([file, "" if s.line is None else s.line, s.field,
                             "" if redact else s.record, s.category, "" if redact else s.reason])
        return buf.getvalue()

    def lines(self, limit: int = 20) -> list[str]:
        """One line per skipped record (for the terminal), at most `limit` plus a count."""
        out = []
        for s in self.skipped[:limit]:
            where = s.file + (f" line {s.line}" if s.line is not None else "")
            field = f", field {s.field}" if s.field else ""
            out.append(f"  {where or s.record}{field}: {s.reason}")
        if len(self.skipped) > limit:
            out.append(f"  ... and {len(self.skipped) - limit} more")
        return out

    def write(self, out_dir: Path, redact: bool = False,
              hash_path: Callable[[str], str] | None = None) -> None:
        """Write skipped.csv into the (not yet published) output directory (see `to_csv`)."""
        atomic_write_text(Path(out_dir) / SKIPPED_CSV, self.to_csv(redact, hash_path))
