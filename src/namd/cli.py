"""The `namd` command: one sub-command per stage of the pipeline.

Sub-commands live in `namd.commands`, one module each, discovered here; every module has
`register(subparsers)` and keeps heavy imports inside its run function, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import namd
import namd.commands


class UsageError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(prog="namd", description=namd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"namd {namd.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(namd.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"namd.commands.{info.name}")
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
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        if args.verbose:
            raise
        print(f"namd {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
