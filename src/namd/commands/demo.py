"""`namd demo [--out RUN]`: the main job on the embedded synthetic cohort, end to end.

Synthetic cohort -> VAE -> prior -> conditional model -> evaluator -> samples -> evaluation ->
report, each stage in its own folder of RUN, resumable (finished stages are skipped). With
`--jobs N` stages that do not depend on each other run at the same time in N worker processes
(logs in RUN/logs).
"""

from __future__ import annotations

import argparse
import os

from namd.rundir import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd demo`."""
    parser = sub.add_parser("demo", help="run the whole pipeline on the synthetic cohort", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="also train and sample the no-align and null-context variants, the "
                             "ablation rows of Table 1 (default: on; --no-ablations for NAMD only)")
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

    from namd.contract import read_json
    from namd.errors import StageFailed
    from namd.pipeline import run_pipeline
    from namd.rundir import RunDir, resolve_config

    run_dir = RunDir(args.out)
    from namd.config.preflight import check_pipeline

    resolve_config(args, run_dir, check=check_pipeline)  # saves RUN/config.yaml; stages reuse it
    ablations = args.ablations
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    from namd.cpuload import snapshot

    start, load_start = time.perf_counter(), snapshot()
    try:
        timings = run_pipeline(run_dir, ablations, args.jobs)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    record_timings(run_dir, args.jobs, ablations, timings, total, load_start)
    metrics = read_json(run_dir.stage("eval") / "metrics.json", "eval")
    print("\n" + format_table(metrics))
    print("\nstage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"total {total / 60:.1f} min")
    print(f"report: {(run_dir.stage('report') / 'index.html').resolve()}")
    return 0


def record_timings(run_dir, jobs: int, ablations: bool, timings: dict[str, float], total: float,
                   load_start: dict) -> None:
    """RUN/pipeline.json: seconds per stage (0 = skipped, already done), the wall time, the CPU
    time of the stages and the load around it (other work's CPUs included), so a run's time is
    stated with the load it ran under."""
    from namd.cpuload import load_record, own_cpu_seconds
    from namd.runinfo import atomic_write_json

    atomic_write_json(run_dir.path / "pipeline.json", {
        "jobs": jobs, "ablations": ablations, "stage_seconds": timings, "wall_seconds": total,
        "cpu_seconds": own_cpu_seconds() - load_start["_own_cpu"], **load_record(load_start)})


def format_table(metrics: dict) -> str:
    """The comparison table as text (AUROC / AUPRC mean +- std [95% CI])."""
    def cell(m: dict | None) -> str:
        if not m or m.get("mean") is None:
            return "-"
        lo, hi = m.get("ci95") or (float("nan"), float("nan"))
        return f"{m['mean']:.3f} ± {m.get('std') or 0:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [f"test nodules: {metrics.get('n_test')} ({metrics.get('n_malignant')} malignant), K = {metrics.get('k')}",
             f"{'row':<20} {'AUROC':<30} {'AUPRC':<30}"]
    for row in metrics["rows"]:
        if row.get("status", "ok") != "ok":
            lines.append(f"{row['name']:<20} {row['status']}")
        else:
            lines.append(f"{row['name']:<20} {cell(row.get('auroc')):<30} {cell(row.get('auprc')):<30}")
    return "\n".join(lines)
