"""`namd evaluate --run RUN [--split test]`: the comparison table (paper Table 1), image quality
and prediction variance, written to RUN/eval/metrics.json (schema: docs/metrics-schema.md) and
RUN/eval/per_nodule.csv, with the table printed."""

from __future__ import annotations

import argparse

from namd.cli.options import add_config_args
from namd.run.layout import RunDir


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd evaluate`."""
    parser = sub.add_parser("evaluate", help="diagnosis metrics, image quality, variance",
                            description=__doc__)
    parser.add_argument("--run", required=True, help="run directory (cohort, evaluator, samples)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="split to evaluate (default: test)")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the run while holding RUN/eval's lock, and print the table."""
    from namd.run.locking import stage_lock

    run_dir = RunDir(args.run)
    with stage_lock(run_dir.stage("eval")):
        table = _evaluate(args, run_dir)
    print(table)
    print(f"evaluate: done -> {run_dir.stage('eval') / 'metrics.json'}")
    return 0


def _evaluate(args: argparse.Namespace, run_dir: RunDir) -> str:
    """Resolve the config, write RUN/eval and return the table as text."""
    from namd.cli.options import resolve_config
    from namd.evaluation.evaluate import evaluate_run
    from namd.evaluation.table_text import format_table

    config = resolve_config(args, run_dir)
    return format_table(evaluate_run(run_dir, config, args.split))
