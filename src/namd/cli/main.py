"""The `namd` command: one sub-command per stage of the pipeline.

Sub-commands live in `namd.cli.commands`, one module each, discovered here; every module has
`register(subparsers)` and keeps heavy imports inside its run function, so `--help` is fast.

Expected errors end the command with exit status 1 and one line on stderr, the traceback only
with -v: the project's own (RunFileError for a missing or damaged run file, ConfigError,
EHRError, CohortError, IngestError: all ValueErrors), a failed stage of `namd demo`
(StageFailed), and file access (OSError).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import namd
import namd.cli.commands
from namd.run.errors import EXPECTED, one_line


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(prog="namd", description=namd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"namd {namd.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(namd.cli.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"namd.cli.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn expected errors into one-line messages."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from namd.run.provenance import recorded_command

    try:
        with recorded_command(["namd", *(sys.argv[1:] if argv is None else argv)]):
            return int(args.func(args) or 0)
    except EXPECTED as exc:
        if args.verbose:
            raise
        print(f"namd {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
