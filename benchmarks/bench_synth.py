"""Benchmark of `namd synth`: wall time to generate a synthetic cohort (target: 1,000 pairs in
under a minute on a 2-core CPU machine).

    python benchmarks/bench_synth.py --pairs 1000 --unpaired 0 --repeats 3 \
        --write benchmarks/results/synth.md

Times the whole generate_cohort call (clinical draws, Brock calibration, rendering, writing
the chunked .npy files and the manifest) in a fresh temporary directory, single process.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_once(pairs: int, unpaired: int, seed: int) -> tuple[float, float]:
    """Wall and CPU seconds of one generate_cohort call into a fresh directory."""
    from namd.cohort.synthetic import generate_cohort
    from namd.config import DataConfig, SynthConfig

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        generate_cohort(Path(tmp) / "cohort", SynthConfig(pairs=pairs, unpaired=unpaired, seed=seed),
                        DataConfig())
        return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    """Run the benchmark and print (and optionally write) a markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--unpaired", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", default=None, help="markdown file to (over)write")
    args = parser.parse_args()
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    from _results import load_line, machine, start_load

    before = start_load()  # other work on the machine slows the benchmark down
    runs = [time_once(args.pairs, args.unpaired, args.seed + r) for r in range(args.repeats)]
    times, cpus = [w for w, _ in runs], [c for _, c in runs]
    crops = 2 * args.pairs + args.unpaired
    best, worst = min(times), max(times)
    mach = machine(before)
    lines = [
        "# Benchmark: `namd synth` (synthetic cohort generation)",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- {load_line(mach)}",
        f"- workload: {args.pairs} pairs + {args.unpaired} unpaired = {crops} crops of 64 x 64 "
        "HU at 0.7 mm, single process, written to a temporary directory",
        f"- runs, wall (s): {', '.join(f'{t:.1f}' for t in times)}; "
        f"CPU time of the process (s): {', '.join(f'{t:.1f}' for t in cpus)}",
        "",
        "| pairs | unpaired | crops | best wall (s) | worst wall (s) | best CPU (s) | crops/s (wall) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {args.pairs} | {args.unpaired} | {crops} | {best:.1f} | {worst:.1f} | {min(cpus):.1f} | "
        f"{crops / best:.0f} | 1,000 pairs < 60 s: {'met' if best * 1000 / max(args.pairs, 1) < 60 else 'NOT met'} |",
        "",
        "Wall time depends on what else runs on the machine (compare the load average with the "
        "CPU count); the process's CPU time is the figure to compare between runs. The "
        "`namd synth` command adds its imports, the contact sheet and the summary (a few "
        "seconds).",
        "",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        from namd.run.provenance import atomic_write_text

        atomic_write_text(Path(args.write), report)


if __name__ == "__main__":
    main()
