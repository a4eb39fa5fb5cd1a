"""`namd report --run RUN`: the run's figures and one-file HTML report in RUN/report/index.html.

Reads what the other stages wrote (RUN/eval, RUN/samples, RUN/vae, RUN/vae_no_align, RUN/cohort,
the run_info.json files); a section whose inputs are missing says which command makes them.
"""

from __future__ import annotations

import argparse

from namd.cli.options import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd report`."""
    parser = sub.add_parser("report", help="figures and the HTML report of a run",
                            description=__doc__)
    parser.add_argument("--run", required=True, help="run directory")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and print its path and the state of each section."""
    from namd.cli.options import resolve_config
    from namd.evaluation.report.build import build_report
    from namd.run.layout import RunDir

    run_dir = RunDir(args.run)
    if not run_dir.path.is_dir():
        raise FileNotFoundError(f"run directory {run_dir.path} not found")
    config = resolve_config(args, run_dir)
    path, sections = build_report(run_dir, config)
    for s in sections:
        print(f"  {s.title:<55} {s.status}")
    print(f"report: {path.resolve()}")
    return 0
