"""`namd demo [--out RUN]`: the main job on the embedded synthetic cohort, end to end.

Synthetic cohort -> VAE -> prior -> conditional model -> evaluator -> samples -> evaluation ->
report, each stage in its own folder of RUN, resumable (finished stages are skipped). With
`--jobs N` stages that do not depend on each other run at the same time in N worker processes
(logs in RUN/logs).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from namd.cli.options import add_config_args
from namd.config import methods

if TYPE_CHECKING:
    from namd.run.layout import RunDir


def demo_methods() -> tuple[str, ...]:
    """The methods `namd demo` runs by default: NAMD and its ablations."""
    return tuple(m.name for m in methods.METHODS.values() if m.in_demo)


def method_list(text: str) -> tuple[str, ...]:
    """--methods: names of the table (namd.config.methods), comma-separated, or 'all'."""
    if text == "all":
        return tuple(methods.METHODS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        try:
            methods.get(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd demo`."""
    parser = sub.add_parser("demo", help="run the whole pipeline on the synthetic cohort", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--methods", type=method_list, default=None, metavar="NAME[,NAME...]|all",
                        help="the methods of the table to train, sample and score (default: "
                             f"{','.join(demo_methods())}, NAMD and its ablations; 'all': every method)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="stages run at the same time in this many worker processes, with "
                             "cores / jobs threads each (all the cores for a stage nothing can run "
                             "beside), logs in RUN/logs (default: the cores; 1 = one after the "
                             "other in this process, with all the cores). A stage's floating-point "
                             "results depend on its thread count, so the same --jobs gives the "
                             "same numbers")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline, then print the report's path and the main table."""
    import sys
    import time

    from namd.cli.graph import run_pipeline
    from namd.cli.options import resolve_config
    from namd.evaluation.table_text import format_table
    from namd.run.errors import StageFailed
    from namd.run.layout import RunDir
    from namd.run.readers import read_json

    run_dir = RunDir(args.out)
    from namd.config.preflight import check_pipeline
    from namd.models.foundation import check_fits

    def preflight(config) -> None:  # the resolved NamdConfig: SD1.5 files, then the foundation
        check_pipeline(config)
        check_fits(config)

    config = resolve_config(args, run_dir, check=preflight)  # saves RUN/config.yaml; stages reuse it
    refuse_ignored_change(run_dir, config.model_dump(mode="json"))
    names = args.methods or demo_methods()
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    from namd.run.machine import snapshot

    start, load_start = time.perf_counter(), snapshot()
    try:
        timings = run_pipeline(run_dir, names, args.jobs)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    record_timings(run_dir, args.jobs, names, timings, total, load_start)
    metrics = read_json(run_dir.stage("eval") / "metrics.json", "eval")
    print("\n" + format_table(metrics))
    print("\nstage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"total {total / 60:.1f} min")
    print(f"report: {(run_dir.stage('report') / 'index.html').resolve()}")
    return 0


def refuse_ignored_change(run_dir: RunDir, now: dict) -> None:
    """Refuse, in one line naming the field, a --set, --config or --preset that differs from the
    config an existing run saved: every stage of the pipeline reads RUN/config.yaml, so the
    change would be silently ignored (found when `--set sampling.steps_offset=0` on a copied run
    sampled with the saved value)."""
    from namd.run.contract import CONFIG_FILE
    from namd.run.layout import config_difference

    saved = run_dir.saved_config()
    diff = config_difference(now, saved, tuple(now)) if saved is not None else None
    if diff is not None:
        field, value, was = diff
        raise ValueError(f"{run_dir.path / CONFIG_FILE}: this run was configured with {field} = {was!r}, "
                         f"not {value!r}; its stages read that file, so the change would be ignored: "
                         "run it into a new --out (or edit the file and remove the stages it changes)")


def record_timings(run_dir, jobs: int, names: tuple[str, ...], timings: dict[str, float], total: float,
                   load_start: dict) -> None:
    """RUN/pipeline.json: seconds per stage (0 = skipped, already done), the wall time, the CPU
    time of the stages and the load around it (other work's CPUs included), so a run's time is
    stated with the load it ran under."""
    from namd.run.machine import load_record, own_cpu_seconds
    from namd.run.provenance import atomic_write_json

    atomic_write_json(run_dir.path / "pipeline.json", {
        "jobs": jobs, "methods": list(names), "stage_seconds": timings, "wall_seconds": total,
        "cpu_seconds": own_cpu_seconds() - load_start["_own_cpu"], **load_record(load_start)})
