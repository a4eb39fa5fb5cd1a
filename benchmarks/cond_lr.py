"""The cond stage's learning rate, measured on a finished demo run: the same cohort, VAE and
prior, the cond model retrained at each rate, then sampled and judged as the demo does.

For each rate a scratch run links RUN's cohort, latent cache, VAE, prior and evaluator, and its
config.yaml is RUN's with the rate (follow_baseline.prepare: the stages after cond accept the
model); then `namd train cond`, `namd sample` and `namd evaluate` run in it. The table is issue 28's quality
bar (benchmarks/demo_compare.py) for RUN and each rate, against the run before the foundation,
plus the cond model's validation loss and its shuffled-baseline ratio per noise band.

    python benchmarks/cond_lr.py --run runs/after --before runs/before --lrs 0.002,0.004
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from demo_compare import criteria, load
from follow_baseline import prepare
from nodule_density import _losses

HERE = Path(__file__).resolve().parent
STAGES = (["train", "cond", "--resume"], ["sample"], ["evaluate"])  # the demo's test-split judge


def retrain(run: Path, scratch: Path, lr: float, threads: int) -> None:
    """A scratch run linking RUN's stages up to the prior, its config given the cond rate
    (follow_baseline.prepare), then its cond stage, samples and evaluation (logs beside it)."""
    prepare(run, scratch, [f"diffusion.cond.lr={lr}"], ["cond"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (scratch / "bench.log").open("w") as log:
        for stage in STAGES:
            subprocess.run([sys.executable, "-m", "namd.cli", *stage, "--run", str(scratch)],
                           check=True, env=env, stdout=log, stderr=subprocess.STDOUT)


def cond_summary(run: Path) -> dict:
    """The cond model's best validation loss and its true / shuffled ratio per noise band."""
    use = json.loads((run / "cond" / "baseline_use.json").read_text())
    return {"val_loss": _losses(run)["cond"], "ratio": use["ratio"],
            "bands": {f"{b['t'][0]}-{b['t'][1]}": b["ratio"] for b in use["bands"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished demo run (its cond rate is the reference)")
    parser.add_argument("--before", required=True, help="the run the known-future energies are judged against")
    parser.add_argument("--lrs", default="0.002,0.004")
    parser.add_argument("--root", default="runs/cond_lr", help="where the scratch runs go")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="tabulate scratch runs already finished")
    parser.add_argument("--out", default=str(HERE / "results" / "cond_lr"))
    args = parser.parse_args()
    run, lrs = Path(args.run), [float(x) for x in args.lrs.split(",")]
    scratches = [Path(args.root) / f"lr_{lr:g}" for lr in lrs]
    if not args.reuse:
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda a: retrain(run, a[1], a[0], threads), zip(lrs, scratches, strict=True)))
    base_lr = yaml.safe_load((run / "config.yaml").read_text())["diffusion"]["cond"]["lr"]
    runs = [(base_lr, run), *zip(lrs, scratches, strict=True)]
    summary = {f"{lr:g}": cond_summary(r) for lr, r in runs}
    bands = list(next(iter(summary.values()))["bands"])
    lines = ["| cond lr | run | best validation loss | ratio | "
             + " | ".join(f"t {b}" for b in bands) + " |", "|---" * (4 + len(bands)) + "|"]
    lines += [f"| {lr:g} | {r} | {summary[f'{lr:g}']['val_loss']:.4f} | {summary[f'{lr:g}']['ratio']:.3f} | "
              + " | ".join(f"{summary[f'{lr:g}']['bands'][b]:.2f}" for b in bands) + " |" for lr, r in runs]
    text = "\n".join([
        "# The cond stage's learning rate", "",
        "`python benchmarks/cond_lr.py " + " ".join(sys.argv[1:]) + "`", "",
        "Same cohort, VAE, prior and evaluator; only the cond model is retrained (and sampled and "
        "judged). Columns of the bar: the run before the foundation, then each rate.", "",
        "## The cond model", "", *lines, "",
        "## Issue 28's quality bar", "", *criteria(load(Path(args.before)), [load(r) for _, r in runs]), ""])
    from namd.run.provenance import atomic_write_json, atomic_write_text

    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_json(out.with_suffix(".json"), {"runs": {f"{lr:g}": str(r) for lr, r in runs}, "cond": summary})
    print(text)


if __name__ == "__main__":
    main()
