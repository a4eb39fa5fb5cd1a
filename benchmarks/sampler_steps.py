"""Which sampler and how many steps: DDIM and DPM-Solver++ (2M) against DDIM 50 on a trained run.

On the run's test split, with the same seeds (the sample stage's own rule, so the initial noise
of sample k of nodule i is the same for every setting), each setting draws K follow-ups; it is
scored against DDIM 50 (the paper's sampler) by goal 2 of the ten-minute issue: per-nodule
mean-probability correlation (the run's evaluator), |delta AUROC| of the mean probability, the
image MAE to the real follow-up, and the latent RMSE to the same seed's DDIM-50 sample. Seconds
count the U-Net sampling and the decode, not the conditioning (computed once, shared).

    python benchmarks/sampler_steps.py --run runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine, publish, start_load

HERE = Path(__file__).resolve().parent
SETTINGS = ("ddim:50", "ddim:25", "ddim:20", "ddim:10",
            "dpmsolver++:25", "dpmsolver++:20", "dpmsolver++:15", "dpmsolver++:10", "dpmsolver++:8")
# goal 2's equal-quality test against DDIM 50
MIN_CORR, MAX_DAUROC, MAX_MAE_REL = 0.98, 0.01, 0.05


def load(run_path: str):
    """The run's sampler, evaluator, test pairs with their conditioning, real follow-ups, labels."""
    from namd.cohort.store import Cohort
    from namd.config import load_config, methods
    from namd.inference.sampler import FollowUpSampler, pairs_to_sample
    from namd.models.evaluator import load_evaluator
    from namd.run.layout import RunDir

    run = RunDir(Path(run_path))
    config = load_config(base=run.saved_config())
    cohort = Cohort(run.require("cohort", "benchmark"))
    pairs = pairs_to_sample(cohort, "test")
    sampler = FollowUpSampler.from_run(run, methods.get(methods.REFERENCE).uses, config)
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(row) for _, row in pairs.iterrows()], config.sampling.aux_batch)
    model, window, _ = load_evaluator(run.require("evaluator", "benchmark"))
    real = cohort.images(pairs["followup_index"])
    return config, sampler, cond, model, window, real, pairs["label"].to_numpy(dtype=int)


def run_setting(config, sampler, cond, setting: str) -> tuple[torch.Tensor, np.ndarray, float]:
    """Latents (N, K, C, h, w), decoded crops (N, K, H, W) in HU, and seconds, for one setting."""
    scheduler, steps = setting.split(":")
    cfg = config.sampling.model_copy(update={"scheduler": scheduler, "steps": int(steps)})
    start = time.perf_counter()
    latents = sampler.generate(cond, cfg, show_progress=False)
    n, k = latents.shape[:2]
    crops = sampler.decode(latents.reshape(n * k, *latents.shape[2:]), cfg.aux_batch)
    return latents, crops.reshape(n, k, *crops.shape[1:]), time.perf_counter() - start


def score(model, window, crops: np.ndarray, real: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """Mean probability per nodule, its AUROC, and the mean per-sample MAE to the real follow-up."""
    from namd.evaluation.evaluate import evaluator_scores
    from namd.evaluation.metrics import auroc

    p, _ = evaluator_scores(model, crops, window, batch)
    mean_prob = p.mean(axis=0)
    lo, hi = window
    mae = np.abs(np.clip(crops, lo, hi) - np.clip(real, lo, hi)[:, None]).mean()
    spread = np.clip(crops, lo, hi).std(axis=1).mean()  # pixel-wise std over K: diversity kept?
    return {"mean_prob": mean_prob, "auroc": auroc(y, mean_prob), "mae_hu": float(mae),
            "spread_hu": float(spread)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run (cond, evaluator, cohort)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="scheduler:steps list; the first is the reference (default DDIM 50)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(HERE / "results" / "sampler_steps"))
    parser.add_argument("--render", default=None, help="only rewrite the markdown of this JSON result")
    args = parser.parse_args()
    if args.render:
        publish(args.render, json.loads(Path(args.render).read_text()), markdown)
        return
    torch.set_num_threads(args.threads)
    load_before = start_load()
    config, sampler, cond, model, window, real, y = load(args.run)
    batch = config.sampling.max_batch  # what namd evaluate uses
    rows, ref = [], None
    for setting in args.settings.split(","):
        latents, crops, seconds = run_setting(config, sampler, cond, setting)
        s = score(model, window, crops, real, y, batch)
        if ref is None:
            ref = {"latents": latents, **s, "seconds": seconds}
        corr = float(np.corrcoef(s["mean_prob"], ref["mean_prob"])[0, 1])
        row = {"setting": setting, "seconds": seconds, "auroc": s["auroc"],
               "delta_auroc": s["auroc"] - ref["auroc"], "mean_prob_corr": corr, "mae_hu": s["mae_hu"],
               "mae_rel": s["mae_hu"] / ref["mae_hu"] - 1, "spread_hu": s["spread_hu"],
               "latent_rmse": float(((latents - ref["latents"]) ** 2).mean().sqrt()),
               "speedup": ref["seconds"] / seconds}
        row["equal_quality"] = bool(corr >= MIN_CORR and abs(row["delta_auroc"]) <= MAX_DAUROC
                                    and abs(row["mae_rel"]) <= MAX_MAE_REL)
        rows.append(row)
        print(row, flush=True)
    record = {"run": args.run, "threads": args.threads, "n_nodules": int(len(y)),
              "k": config.sampling.k, "latent_std": float(ref["latents"].std()), "rows": rows,
              "criteria": {"min_corr": MIN_CORR, "max_delta_auroc": MAX_DAUROC, "max_mae_rel": MAX_MAE_REL},
              "machine": machine(load_before)}
    publish(args.out, record, markdown)


def markdown(r: dict) -> str:
    """The table of settings against DDIM 50."""
    m = r["machine"]
    lines = [f"# Sampler and steps against DDIM 50 ({r['run']}, test split)", "",
             f"`python benchmarks/sampler_steps.py --run {r['run']}`: {r['n_nodules']} nodules x "
             f"K = {r['k']}, {r['threads']} thread(s); {m['platform']}, {m['cpus']} CPUs, torch "
             f"{m['torch']}. Seconds: U-Net sampling and decode of all "
             f"N x K crops; spread = pixel-wise std over the K samples, so that fewer steps cannot pass by collapsing the samples' diversity. Equal quality: mean-probability correlation >= {r['criteria']['min_corr']}, "
             f"|delta AUROC| <= {r['criteria']['max_delta_auroc']}, image MAE within "
             f"{r['criteria']['max_mae_rel']:.0%}; latent RMSE to the same seed's DDIM-50 sample "
             f"(latent std {r['latent_std']:.3f}).", "",
             "| setting | seconds | speed-up | AUROC | delta AUROC | mean-prob corr | MAE (HU) | "
             "MAE vs DDIM 50 | spread over K (HU) | latent RMSE | equal quality |", "|---" * 11 + "|"]
    for row in r["rows"]:
        lines.append(f"| {row['setting']} | {row['seconds']:.1f} | {row['speedup']:.2f}x | "
                     f"{row['auroc']:.3f} | {row['delta_auroc']:+.3f} | {row['mean_prob_corr']:.4f} | "
                     f"{row['mae_hu']:.1f} | {row['mae_rel']:+.1%} | {row['spread_hu']:.1f} | {row['latent_rmse']:.3f} | "
                     f"{'yes' if row['equal_quality'] else 'no'} |")
    if m.get("note"):
        lines += ["", f"Note: {m['note']}."]
    passing = [row for row in r["rows"][1:] if row["equal_quality"]]
    if passing:
        cheapest = min(passing, key=lambda row: int(row["setting"].split(":")[1]))
        lines += ["", f"Fewest steps at equal quality: **{cheapest['setting']}** (the seconds of one "
                  "table are comparable only on an unloaded machine: see the load line)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
