"""The readers of run files: every file a stage reads goes through these helpers, which turn
whatever a parser raises (or a file that parses but is not what namd wrote: a weight file whose
sha256 differs from the one its stage recorded) into RunFileError, one line
"<path>: <what is wrong> — <what to do>" (namd.run.contract names the command that writes the
file again). tests/run/test_contract.py damages every file the contract lists and calls every
one of its readers.

Light on purpose (standard library only at import): the CLI imports it for `--help`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from namd.run.contract import RunFileError, by_folder, internal_files, remedy_for, stage_of


def require(path: Path, writer: str | None = None) -> Path:
    """The path of a file that must be there."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(path, "not a file" if path.exists() else "missing", writer=writer)
    return path


def read_text(path: Path, writer: str | None = None, whole_lines: bool = False) -> str:
    """A text file namd wrote; `whole_lines`: it must end with a newline (as namd writes it),
    so a file cut short at any point but a line end is caught."""
    path = require(path, writer)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunFileError(path, "not text (overwritten with other data?)", writer=writer) from None
    except OSError as exc:
        raise RunFileError(path, f"unreadable ({exc.strerror or exc})", writer=writer) from None
    if not text.strip():
        raise RunFileError(path, "empty", writer=writer)
    if whole_lines and not text.endswith("\n"):
        raise RunFileError(path, "cut short (its last line is incomplete)", writer=writer)
    return text


def read_json(path: Path, writer: str | None = None, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object namd wrote, holding at least `keys`."""
    text = read_text(path, writer)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFileError(path, f"not valid JSON (cut short or overwritten? {exc.msg} at line "
                           f"{exc.lineno})", writer=writer) from None
    if not isinstance(data, dict):
        raise RunFileError(path, f"holds a JSON {type(data).__name__}, not an object", writer=writer)
    missing = [k for k in keys if k not in data]
    if missing:
        raise RunFileError(path, f"lacks {', '.join(missing)}", writer=writer)
    return data


def read_yaml(path: Path, writer: str | None = None) -> dict[str, Any]:
    """A YAML mapping namd wrote (whole lines)."""
    import yaml

    text = read_text(path, writer, whole_lines=True)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunFileError(path, f"not valid YAML ({exc})", writer=writer) from None
    if not isinstance(data, dict):
        raise RunFileError(path, f"holds a YAML {type(data).__name__}, not a mapping", writer=writer)
    return data


def read_csv(path: Path, writer: str | None = None, **kwargs: Any):
    """A CSV table namd wrote (whole lines), as a DataFrame; kwargs go to pandas.read_csv."""
    import io

    import pandas as pd

    text = read_text(path, writer, whole_lines=True)
    try:
        return pd.read_csv(io.StringIO(text), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise RunFileError(path, f"not a readable CSV table ({exc})", writer=writer) from None


def load_npy(path: Path, writer: str | None = None, mmap_mode: str | None = "r"):
    """A .npy array (memory-mapped by default; never unpickled)."""
    import numpy as np

    path = require(path, writer)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        detail = "not a numeric array" if "pickle" in str(exc) else exc  # numpy's word for garbage
        raise RunFileError(path, f"not a readable .npy array (cut short or overwritten? {detail})",
                           writer=writer) from None


def check_safetensors(path: Path, writer: str | None = None) -> dict[str, str]:
    """Check a safetensors file without loading its tensors (header, and that the data covers
    it whole; then its sha256, when its stage recorded one: `check_recorded_sha256`); returns
    its metadata."""
    from safetensors import SafetensorError, safe_open

    path = require(path, writer)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise RunFileError(path, f"not a readable safetensors file (cut short or overwritten? "
                           f"{exc})", writer=writer) from None
    check_recorded_sha256(path, writer)
    return metadata


def load_safetensors(path: Path, writer: str | None = None) -> dict[str, Any]:
    """All tensors of a safetensors file."""
    from safetensors.torch import load_file

    check_safetensors(path, writer)
    with reading(path, writer):
        return load_file(str(path))


@contextlib.contextmanager
def reading(path: Path, writer: str | None = None) -> Iterator[None]:
    """Turn what a library's loader raises on a bad file (after the checks above) into a
    RunFileError naming `path`."""
    from safetensors import SafetensorError

    try:
        yield
    except RunFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise RunFileError(path, f"could not be read ({type(exc).__name__}: {exc})",
                           writer=writer) from exc


# -- the sha256 a stage recorded of each weight file it wrote (run_info.json) -------------------
def recorded_weight_files(name: str, folder: Path) -> list[Path]:
    """The weight files (*.safetensors) of stage folder `folder` whose sha256 its run_info.json
    records: every one but the stage's own resume state, i.e. the files that only match
    patterns of its contract no reader reads (checkpoints/last/; checkpoints/best/ too except
    the evaluator's, which inference reads), and hidden temporary or aside copies."""
    from fnmatch import fnmatchcase

    folder, table = Path(folder), by_folder()
    writes = table[name].writes if name in table else internal_files()

    def recorded(rel: str) -> bool:
        matched = [f for f in writes if fnmatchcase(rel, f.pattern)]
        return not matched or any(f.readers for f in matched)

    files = (p for p in folder.rglob("*.safetensors") if p.is_file())
    return sorted(p for p in files if not any(part.startswith(".") for part in
                                              p.relative_to(folder).parts)
                  and recorded(p.relative_to(folder).as_posix()))


def _writer_command(path: Path, writer: str | None) -> str:
    """`namd train cond` (with its --method flag): the command that wrote a stage's file."""
    found = stage_of(path, writer)
    if found is None:
        return "namd"
    stage, folder = found
    return stage.command.replace(" --run {run}", "").format(run="RUN", dir=folder)


def check_recorded_sha256(path: Path, writer: str | None = None) -> None:
    """Refuse a weight file whose sha256 differs from the one its stage folder's run_info.json
    recorded when the stage wrote it (`weights_sha256`, namd.run.layout.RunDir.mark_done): one
    flipped byte parses, so only its hash tells. A file the record does not list, or a stage
    folder of an older namd that records none, is read as before. Hashed once per process and
    file state (file_sha256 caches by path, size and mtime)."""
    from namd.run.provenance import RUN_INFO, WEIGHTS_KEY, file_sha256

    path = Path(path)
    found = stage_of(path, writer)  # the contract folder the file lies in
    info = found[1] / RUN_INFO if found is not None else None
    if info is None or not info.is_file():
        return
    recorded = read_json(info, writer).get(WEIGHTS_KEY) or {}
    if not isinstance(recorded, dict):
        raise RunFileError(info, f"{WEIGHTS_KEY} is not an object", writer=writer)
    expected = recorded.get(path.relative_to(info.parent).as_posix())
    if expected is not None and file_sha256(path) != expected:
        raise RunFileError(path, f"its sha256 differs from the one recorded when "
                           f"`{_writer_command(path, writer)}` wrote it (damaged or replaced)",
                           f"restore it from a backup, or {remedy_for(path, writer)}, then the "
                           "stages after it")
