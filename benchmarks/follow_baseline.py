"""The lever study of "virtual follow-ups that follow their baseline": each lever is a set of
config overrides trained in its own run folder beside a reference run, judged on the
validation split only (the test split is scored once, by the final demo).

    python benchmarks/follow_baseline.py --base runs/ref --root runs/study \
        --lever "vae8:vae.latent_channels=8" --lever "draws16:diffusion.cond_draws=16" \
        --stages vae,prior,cond,val --threads 1 --jobs 2 --out benchmarks/results/follow_baseline_raw

A lever folder links the base run's cohort (and, for stages it does not retrain, the base's
stage folders and latent cache), writes `config.yaml` = the base config + the lever's
overrides, and runs `namd train vae / prior / cond`, then `namd sample --split val` and
`namd evaluate --split val` with the base run's evaluator. Levers run as separate processes,
`--jobs` at a time with `--threads` torch threads each (small tensors: two one-thread processes
do more work than one two-thread process on this CPU). What is collected per lever: the VAE
report (PSNR, alignment), the cond stage's baseline use (shuffled-baseline loss ratio per
timestep band, beside the prior's loss), the val-split image quality of the mean of K against
`vae_copy_baseline`, and seconds per stage.
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

import yaml
from _results import load_line, machine, publish, start_load

STAGES = ("vae", "prior", "cond", "val")


def lever_config(base: Path, overrides: list[str]) -> dict:
    """The base run's saved config with the lever's overrides applied (validated)."""
    from namd.config import load_config

    saved = yaml.safe_load((base / "config.yaml").read_text())
    return load_config(base=saved, overrides=overrides).model_dump(mode="json")


def prepare(base: Path, folder: Path, overrides: list[str], stages: list[str]) -> None:
    """The lever's run folder: config, the base's cohort, and the base's stages it reuses."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(lever_config(base, overrides), sort_keys=False))
    reuse = ["cohort", "evaluator"]
    for stage in ("vae", "prior", "cond"):  # a retrained stage invalidates the later ones
        if stage in stages:
            break
        reuse += [stage, "cache"] if stage == "vae" else [stage]
    for name in reuse:
        link = folder / name
        if not link.exists() and (base / name).exists():
            link.symlink_to((base / name).resolve())


def commands(folder: Path, stages: list[str]) -> list[tuple[str, list[str]]]:
    """The namd commands of the requested stages."""
    r = str(folder)
    out = []
    for stage in ("vae", "prior", "cond"):
        if stage in stages:
            out.append((stage, ["train", stage, "--run", r, "--resume"]))
    if "val" in stages:
        out.append(("sample", ["sample", "--run", r, "--split", "val", "--overwrite"]))
        out.append(("evaluate", ["evaluate", "--run", r, "--split", "val"]))
    return out


def run_lever(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Train and score one lever in its own processes; returns what the study tabulates."""
    folder = Path(args.root) / name
    stages = args.stages.split(",")
    prepare(Path(args.base), folder, overrides, stages)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    seconds: dict[str, float] = {}
    log = (folder / "study.log").open("a")
    for stage, argv in commands(folder, stages):
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "namd.cli", *argv], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        seconds[stage] = round(time.perf_counter() - start, 1)
        if code != 0:
            return {"name": name, "overrides": overrides, "error": f"{stage} exited {code}",
                    "seconds": seconds}
    return {"name": name, "overrides": overrides, "seconds": seconds, **collect(folder)}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def collect(folder: Path) -> dict:
    """VAE report, baseline use and val-split image quality of a finished lever."""
    vae = _json(folder / "vae" / "report.json")
    use = _json(folder / "cond" / "baseline_use.json")
    metrics = _json(folder / "eval" / "metrics.json")
    iq = metrics.get("image_quality", {})
    out = {"vae": {k: vae.get(k) for k in ("recon_psnr", "recon_mae", "distance_spearman",
                                           "knn_r2_diameter", "probe_auroc")},
           "baseline_use": {k: use.get(k) for k in ("ratio", "ratio_to_prior", "loss_true",
                                                    "loss_shuffled", "loss_prior",
                                                    "x0_nearest_own_baseline")},
           "bands": [round(b["ratio"], 3) for b in use.get("bands", [])]}
    if (folder / "vae" / "report.json").is_file():
        out["vae"]["vae_copy_nearest_share"] = vae_copy_nearest(folder)
    fid = metrics.get("fidelity", {}).get("namd", {})
    if fid:
        out["val"] = {"mean_of_k_mae": fid.get("mean_of_k_mae_hu"),
                      "vae_copy_mae": iq.get("vae_copy_baseline", {}).get("mae_hu", {}).get("mean"),
                      "ratio_to_vae_copy": fid.get("mean_of_k_mae_to_vae_copy"),
                      "nearest_share": fid.get("nearest_own_followup_share"),
                      "per_sample_mae": fid.get("per_sample_mae_hu"),
                      "spread_hu": fid.get("spread_over_k_hu"),
                      "copy_mae": iq.get("copy_baseline", {}).get("mae_hu", {}).get("mean")}
    return out


def vae_copy_nearest(folder: Path) -> float:
    """Share of validation pairs whose baseline, through the lever's VAE, is nearer its own real
    follow-up than any other pair's: the ceiling of the samples' nearest-follow-up share."""
    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.evaluation.fidelity import mae_matrix, nearest_own_share, vae_roundtrip

    window = tuple(load_config(base=yaml.safe_load((folder / "config.yaml").read_text())).data.window_hu)
    cohort = Cohort(folder / "cohort")
    pairs = cohort.pairs("val")
    copy = vae_roundtrip(folder / "vae", cohort.images(pairs["baseline_index"]), window)
    return nearest_own_share(mae_matrix(copy, cohort.images(pairs["followup_index"]), window))


def markdown(record: dict) -> str:
    """One row per lever."""
    lines = ["# Lever study (validation split)", "", f"Machine: {json.dumps(record['machine'])}", "",
             load_line(record["machine"]), "",
             "| lever | overrides | PSNR | Spearman | kNN R2 | VAE copy nearest | ratio true/shuffled "
             "| bands | true/prior | x0 own | mean-of-K MAE / VAE copy | nearest | spread HU | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def f(v, d=2):
        return "" if v is None else f"{v:.{d}f}"
    for r in record["levers"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {' '.join(r['overrides'])} | {r['error']} |")
            continue
        v, u, val = r["vae"], r["baseline_use"], r.get("val", {})
        lines.append(
            f"| {r['name']} | {' '.join(r['overrides'])} | {f(v['recon_psnr'])} | "
            f"{f(v['distance_spearman'])} | {f(v['knn_r2_diameter'])} | "
            f"{f(v.get('vae_copy_nearest_share'))} | {f(u['ratio'])} | "
            f"{' / '.join(f(b) for b in r['bands'])} | {f(u['ratio_to_prior'])} | "
            f"{f(u['x0_nearest_own_baseline'])} | {f(val.get('ratio_to_vae_copy'))} | "
            f"{f(val.get('nearest_share'))} | {f(val.get('spread_hu'), 0)} | "
            f"{sum(r['seconds'].values()):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the levers, `--jobs` at a time, and publish the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="reference run (cohort, vae, prior, evaluator)")
    p.add_argument("--root", required=True, help="folder of the levers' runs")
    p.add_argument("--lever", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                   help="a named set of overrides (repeatable; 'NAME:' alone = the base config)")
    p.add_argument("--stages", default="vae,prior,cond,val", help=f"subset of {','.join(STAGES)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="results path without suffix (.json and .md)")
    args = p.parse_args()
    levers = []
    for item in args.lever:
        name, _, rest = item.partition(":")
        levers.append((name, [o for o in rest.split(";") if o]))
    before = start_load()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda lv: run_lever(lv[0], lv[1], args), levers))
    # the levers' processes ran --jobs x --threads torch threads in all, not this process's
    record = {"machine": machine(before, threads=args.jobs * args.threads), "base": args.base,
              "stages": args.stages, "threads": args.threads, "jobs": args.jobs, "levers": results}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
