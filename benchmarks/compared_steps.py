"""How many sampler steps a compared method needs at CPU size: its K follow-ups of the first N
test nodules at several step counts beside its most (the paper preset's count), with the same
seeds. Per step count: the mean |latent - latent at the most steps|, the image MAE of the mean
of K to the real follow-up, and the spread over K.

    python benchmarks/compared_steps.py --run runs/table --method flux --steps 4 8 16 28
    python benchmarks/compared_steps.py --run runs/table --method ddlcxr --steps 5 10 20 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine, publish, start_load

from namd.cohort.store import Cohort
from namd.config import load_config, methods, validated_update
from namd.inference.sampler import pairs_to_sample
from namd.run.layout import RunDir

HERE = Path(__file__).resolve().parent


def study(run: RunDir, method: str, steps: list[int], n: int, k: int) -> dict:
    """Latents and images of the first `n` test nodules at each step count."""
    config = load_config(base=run.saved_config())
    sampler = methods.get(method).load_sampler(run, config)
    cohort = Cohort(run.stage("cohort"))
    pairs = pairs_to_sample(cohort, "test").iloc[:n]
    follow = cohort.images(pairs["followup_index"])
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(r) for _, r in pairs.iterrows()])
    latents, seconds = {}, {}
    for s in steps:
        cfg = validated_update(config, {"sampling.k": k, "sampling.steps": s}).sampling
        start = time.perf_counter()
        latents[s] = sampler.generate(cond, cfg, show_progress=False)
        seconds[s] = time.perf_counter() - start
    ref = latents[max(steps)]
    rows = []
    for s in steps:
        lat = latents[s]
        img = sampler.decode(lat.reshape(-1, *lat.shape[2:])).reshape(n, k, *follow.shape[1:])
        rows.append({"steps": s, "latent_diff": float((lat - ref).abs().mean()),
                     "mae_mean_of_k": float(np.abs(img.mean(1) - follow).mean()),
                     "spread_hu": float(img.std(1).mean()), "seconds": seconds[s]})
    return {"method": method, "n": n, "k": k, "rows": rows}


def markdown(r: dict) -> str:
    lines = [f"# Sampler steps of {r['method']} at CPU size", "", f"`{r['command']}`", "",
             f"First {r['n']} test nodules x K = {r['k']}, the same seeds at every step count; the "
             f"reference is the most steps.", "",
             "| steps | mean abs latent diff to the most | image MAE, mean of K to the real follow-up (HU) "
             "| spread over K (HU) | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {x['steps']} | {x['latent_diff']:.3f} | {x['mae_mean_of_k']:.1f} | {x['spread_hu']:.1f} "
              f"| {x['seconds']:.1f} |" for x in r["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", default=None, help="default: results/<method>_steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = start_load()
    record = study(RunDir(args.run), args.method, sorted(args.steps), args.n, args.k)
    record["command"] = (f"python benchmarks/compared_steps.py --run {args.run} --method "
                         f"{args.method} --steps {' '.join(map(str, args.steps))}")
    record["machine"] = machine(before)
    publish(args.out or HERE / "results" / f"{args.method}_steps", record, markdown)


if __name__ == "__main__":
    main()
