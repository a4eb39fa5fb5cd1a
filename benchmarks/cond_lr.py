"""The cond stage's levers (its learning rate, its length, when its soft prompts freeze),
measured on a finished demo run: the same cohort, VAE and prior, the cond model retrained under
each lever, then sampled and judged as the demo does.

For each lever a scratch run links RUN's cohort, latent cache, VAE, prior and evaluator, and its
config.yaml is RUN's with the lever's overrides (follow_baseline.prepare: the stages after cond
accept the model); then `namd train cond` (timed), `namd sample` and `namd evaluate` run in it.
The table is issue 28's quality bar (benchmarks/demo_compare.py) for RUN and each lever, against
the run before the foundation, plus the cond model's validation loss, its shuffled-baseline
ratio per noise band and the seconds its training took (levers run side by side, `--jobs` at a
time: compare the seconds as ratios within one table).

    python benchmarks/cond_lr.py --run runs/after --before runs/before --lrs 0.002,0.004
    python benchmarks/cond_lr.py --run runs/demo --before runs/before --lever p50 \
        diffusion.prompt_steps=50 --lever s400 diffusion.cond.max_steps=400 diffusion.prompt_steps=50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import load_line, machine, start_load
from demo_compare import criteria, load
from follow_baseline import prepare
from nodule_density import _losses

HERE = Path(__file__).resolve().parent
STAGES = (["train", "cond", "--resume"], ["sample"], ["evaluate"])  # the demo's test-split judge
TIMES = "cond_seconds.json"  # in each scratch run: the wall seconds of its cond training


def retrain(run: Path, scratch: Path, overrides: list[str], threads: int) -> None:
    """A scratch run linking RUN's stages up to the prior, its config given the overrides
    (follow_baseline.prepare), then its cond stage (timed), samples and evaluation (logs
    beside it). A finished scratch run is left as it is."""
    if (scratch / "eval" / "metrics.json").exists():
        return
    prepare(run, scratch, overrides, ["cond"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (scratch / "bench.log").open("a") as log:
        for stage in STAGES:
            timed = stage[:2] == ["train", "cond"] and not (scratch / TIMES).exists()
            load, start = start_load() if timed else None, time.perf_counter()
            subprocess.run([sys.executable, "-m", "namd.cli", *stage, "--run", str(scratch)],
                           check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
            if timed:
                (scratch / TIMES).write_text(json.dumps({"seconds": time.perf_counter() - start,
                                                         "machine": machine(load, threads)}))


def cond_summary(run: Path) -> dict:
    """The cond model's best validation loss and step, its true / shuffled ratio per noise
    band, and its training seconds (None for RUN itself: see its pipeline.json)."""
    use = json.loads((run / "cond" / "baseline_use.json").read_text())
    info = json.loads((run / "cond" / "run_info.json").read_text())
    times = json.loads((run / TIMES).read_text()) if (run / TIMES).exists() else {}
    return {"val_loss": _losses(run)["cond"], "best_step": info.get("best_step"),
            "steps": info.get("steps"), "ratio": use["ratio"],
            "seconds": times.get("seconds"), "machine": times.get("machine"),
            "bands": {f"{b['t'][0]}-{b['t'][1]}": b["ratio"] for b in use["bands"]}}


def levers(args: argparse.Namespace) -> dict[str, list[str]]:
    """Scratch-run name -> its overrides: `--lrs` (named lr_<rate>) then each `--lever`."""
    out = {f"lr_{float(x):g}": [f"diffusion.cond.lr={float(x)}"]
           for x in (args.lrs.split(",") if args.lrs else [])}
    out.update({name: sets for name, *sets in args.lever or []})
    if not out:
        raise SystemExit("nothing to measure: give --lrs or --lever")
    return out


def table(summary: dict[str, dict], overrides: dict[str, list[str]]) -> list[str]:
    """The cond model's rows: validation loss, ratio per band, training seconds."""
    bands = list(next(iter(summary.values()))["bands"])
    lines = ["| lever | overrides | steps (best) | best validation loss | ratio | "
             + " | ".join(f"t {b}" for b in bands) + " | cond seconds |", "|---" * (6 + len(bands)) + "|"]
    for name, s in summary.items():
        secs = "-" if s["seconds"] is None else f"{s['seconds']:.0f}"
        lines.append(f"| {name} | {' '.join(overrides.get(name, [])) or 'as trained'} | "
                     f"{s['steps']} ({s['best_step']}) | {s['val_loss']:.4f} | {s['ratio']:.3f} | "
                     + " | ".join(f"{s['bands'][b]:.2f}" for b in bands) + f" | {secs} |")
    return lines + [""] + [
        f"- {name}'s cond training: " + (load_line(s["machine"])
                                         if s.get("machine") else "no load record (timed before "
                                         "the script kept one; `--jobs` levers side by side)")
        for name, s in summary.items() if s["seconds"] is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished demo run (the reference)")
    parser.add_argument("--before", required=True, help="the run the known-future energies are judged against")
    parser.add_argument("--lrs", default="", help="cond learning rates, comma-separated (levers lr_<rate>)")
    parser.add_argument("--lever", action="append", nargs="+", metavar=("NAME", "KEY=VALUE"),
                        help="a named lever and its config overrides (repeatable)")
    parser.add_argument("--root", default="runs/cond_lr", help="where the scratch runs go")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="tabulate scratch runs already finished")
    parser.add_argument("--out", default=str(HERE / "results" / "cond_lr"))
    args = parser.parse_args()
    run, sets = Path(args.run), levers(args)
    scratches = {name: Path(args.root) / name for name in sets}
    if not args.reuse:
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda n: retrain(run, scratches[n], sets[n], threads), sets))
    runs = {str(run): run, **scratches}
    summary = {name: cond_summary(r) for name, r in runs.items()}
    text = "\n".join([
        "# The cond stage's levers", "",
        "`python benchmarks/cond_lr.py " + " ".join(a for a in sys.argv[1:] if a != "--reuse") + "`", "",
        "Same cohort, VAE, prior and evaluator; only the cond model is retrained (and sampled and "
        "judged). Columns of the bar: the run before the foundation, then RUN and each lever.", "",
        "## The cond model", "", *table(summary, sets), "",
        "## Issue 28's quality bar", "", *criteria(load(Path(args.before)), [load(r) for r in runs.values()]), ""])
    from namd.run.provenance import atomic_write_json, atomic_write_text

    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_json(out.with_suffix(".json"), {"runs": {k: str(v) for k, v in runs.items()},
                                                 "overrides": sets, "cond": summary})
    print(text)


if __name__ == "__main__":
    main()
