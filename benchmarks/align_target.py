"""L_align's target P: raw nodule features (the authors' code) against standardised ones, with
sigma_f as the authors set it and re-tuned, judged on the validation split by the VAE report
(reconstruction, the alignment measures, P's row entropy). Issue 15.

    python benchmarks/align_target.py --base runs/demo_final --root runs/align \
        --out benchmarks/results/align_target

Each lever retrains only the VAE (`namd train vae`) in its own folder through the lever harness
of benchmarks/follow_baseline.py (same cohort, same seed, the base config plus the overrides).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import load_line, machine, publish, start_load
from follow_baseline import _json, run_lever

LEVERS = {
    "standardised_s4": ["vae.features=standardised", "vae.sigma_f=4"],
    "raw_s4": ["vae.features=raw", "vae.sigma_f=4"],
    "standardised_s1.7": ["vae.features=standardised", "vae.sigma_f=1.7"],
    "standardised_s1": ["vae.features=standardised", "vae.sigma_f=1"],
}
KEYS = ("recon_psnr", "recon_mae", "distance_spearman", "distance_spearman_flat", "knn_r2_diameter",
        "knn_r2_diameter_flat", "linear_probe_auroc", "target_entropy", "target_entropy_uniform")


def lever(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Retrain the VAE of one lever and keep its report's measures."""
    args.stages = "vae"
    result = run_lever(name, overrides, args)
    report = _json(Path(args.root) / name / "vae" / "report.json")
    return {"name": name, "overrides": overrides, "seconds": result.get("seconds"),
            "error": result.get("error"), **{k: report.get(k) for k in KEYS}}


def markdown(record: dict) -> str:
    """One row per lever."""
    head = ["lever", "overrides", *KEYS, "s"]
    lines = ["# L_align's target: raw vs standardised features (validation split)", "",
             f"Machine: {json.dumps(record['machine'])}", "", load_line(record["machine"]), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["levers"]:
        cells = [r["name"], " ".join(r["overrides"])]
        cells += ["" if r.get(k) is None else f"{r[k]:.3f}" for k in KEYS]
        cells.append(f"{sum((r.get('seconds') or {}).values()):.0f}" if not r.get("error") else r["error"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the levers, `--jobs` at a time, and publish the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="reference run (its config and cohort)")
    p.add_argument("--root", required=True, help="folder of the levers' runs")
    p.add_argument("--only", action="append", default=None, help=f"levers to run (of {', '.join(LEVERS)})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="results path without suffix (.json and .md)")
    args = p.parse_args()
    chosen = args.only or list(LEVERS)
    before = start_load()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda n: lever(n, LEVERS[n], args), chosen))
    record = {"machine": machine(before, threads=args.jobs * args.threads), "base": args.base,
              "levers": results}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
