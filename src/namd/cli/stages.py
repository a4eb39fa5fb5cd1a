"""What a stage of `namd demo` is and how one runs: the stage (the folder that proves it done, its
`namd` arguments, what it needs), its call to the command's own function, and the handle and log
of a running stage. Below both runners: the graph walk (namd.cli.graph) and its worker pool
(namd.cli.pool).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from namd.run.errors import StageFailed, one_line
from namd.run.layout import RunDir
from namd.run.provenance import recorded_command

LOG_DIR = "logs"


@dataclass(frozen=True)
class Step:
    """One stage: the folder that proves it is done, the `namd` arguments that make it, and the
    folders of the stages whose outputs it reads."""

    folder: str
    argv: tuple[str, ...]
    needs: tuple[str, ...] = ()


def run_step(parser: argparse.ArgumentParser, step: Step) -> None:
    """Call one stage's command function, recorded in run_info as its own `namd` command.

    Unlike `namd.cli.main.main` nothing is turned into an exit code: a stage's error becomes a
    StageFailed naming the stage, the error's type and its one-line message, chained to the
    original (`__cause__`), so callers and tracebacks keep what actually went wrong.
    """
    argv = list(step.argv)
    args = parser.parse_args(argv)
    command = f"namd {' '.join(argv)}"
    try:
        with recorded_command(["namd", *argv]):
            code = int(args.func(args) or 0)
    except Exception as exc:
        raise StageFailed(f"stage {step.folder} failed ({command}): {type(exc).__name__}: "
                          f"{one_line(exc)}") from exc
    if code != 0:
        raise StageFailed(f"stage {step.folder} failed ({command} returned {code})")


class Handle(Protocol):
    """What the graph walk needs of a running stage: subprocess.Popen's poll and terminate."""

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...


@dataclass
class Launched:
    """A running stage: its handle (a worker's task, or a process in tests) and its log."""

    process: Handle
    log_path: Path
    started: float


def log_path(run: RunDir, step: Step) -> Path:
    """RUN/logs/<stage>.log, where a stage run by the graph writes its output."""
    path = run.path / LOG_DIR / f"{step.folder}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
