"""Why the generated nodules are fainter after the foundation (issue 28): per run, the nodule
density and diameter of NAMD's samples against the real follow-ups, the diffusion stages'
validation losses (harder latents give higher losses), and, for one run, the same nodules
redrawn with more sampler steps (is it the sampler or the model?). cond / prior: the conditional
model's validation loss over the unconditional prior's, how much the baseline and the record
buy (1 = nothing).

Density and diameter come from the project's one nodule measurer (namd.evaluation.measure),
over the first `--nodules` test nodules of each run's sample folder (all K samples).

    python benchmarks/nodule_density.py --runs runs/demo_before runs/demo --resample runs/demo --steps 5,10,20 [--eta 0,1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from _results import machine, publish, start_load

HERE = Path(__file__).resolve().parent


def _measured(crops: np.ndarray, spacing: float) -> dict:
    """Mean density (HU) and longest diameter (mm) of the nodules the measurer finds."""
    from namd.evaluation.measure import measure

    m = measure(np.asarray(crops, dtype=np.float32), spacing)
    return {"density_hu": float(np.nanmean(m.density_hu)), "diameter_mm": float(np.nanmean(m.longest_mm))}


def _losses(run: Path) -> dict:
    """Best validation loss of each diffusion stage of NAMD (v-prediction MSE)."""
    out = {}
    for stage in ("prior", "cond"):
        info = json.loads((run / stage / "run_info.json").read_text())
        out[stage] = info.get("best_val")
    return out


def one_run(run: Path, n: int) -> dict:
    """NAMD's samples, the real follow-ups and the baselines of the first n test nodules."""
    from namd.cohort.store import Cohort

    cohort = Cohort(run / "cohort")
    index = pd.read_csv(run / "samples" / "index.csv").head(n)
    samples = np.load(run / "samples" / "samples.npy", mmap_mode="r")[:n]
    spacing = float(cohort.meta.get("pixel_spacing_mm", 0.7))
    real = cohort.images(index["followup_index"].to_numpy())[:, None]
    base = cohort.images(index["baseline_index"].to_numpy())[:, None]
    steps = json.loads((run / "samples" / "run_info.json").read_text())["config"]["sampling"]["steps"]
    return {"run": str(run), "n": len(index), "sampler_steps": steps, "generated": _measured(samples, spacing),
            "real_followup": _measured(real, spacing), "baseline": _measured(base, spacing),
            "best_val": _losses(run)}


def resample(run: Path, n: int, steps: list[int], etas: list[float] | None = None) -> list[dict]:
    """The same nodules and seeds redrawn by NAMD's trained model with other sampler steps and
    DDIM eta (the run's own timestep spacing and eta unless given, recorded)."""
    import torch

    from namd.cohort.store import Cohort
    from namd.config import load_config, methods, validated_update
    from namd.inference.sampler import FollowUpSampler, pairs_to_sample
    from namd.run.layout import RunDir

    torch.set_num_threads(2)
    rd, cohort = RunDir(run), Cohort(run / "cohort")
    config = load_config("tiny", str(run / "config.yaml"))
    pairs = pairs_to_sample(cohort, "test").head(n)
    out = []
    for s, eta in [(s, e) for s in steps for e in (etas or [config.sampling.eta])]:
        cfg = validated_update(config, {"sampling.steps": s, "sampling.eta": eta})
        sampler = FollowUpSampler.from_run(rd, methods.get("namd").uses, cfg, "cpu")
        cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                    [Cohort.ehr(r) for _, r in pairs.iterrows()], 16)
        latents = sampler.generate(cond, cfg.sampling, show_progress=False)
        k = latents.shape[1]
        images = sampler.decode(latents.reshape(-1, *latents.shape[2:]), 16).reshape(len(pairs), k, *cohort.images([0]).shape[1:])
        out.append({"steps": s, "eta": eta, "spacing": cfg.sampling.timestep_spacing, **_measured(images, config.data.pixel_spacing_mm)})
    return out


def markdown(record: dict) -> str:
    """The tables of the result."""
    lines = ["# Nodule density of the generated follow-ups", "", f"`{record['command']}`", "",
             f"First {record['nodules']} test nodules of each run, all K samples; the one nodule measurer.", "",
             "| run | sampler steps | generated density (HU) | real follow-up | baseline | generated diameter (mm) "
             "| real follow-up | prior best val | cond best val | cond / prior |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        g, f, b, v = r["generated"], r["real_followup"], r["baseline"], r["best_val"]
        lines.append(f"| {r['run']} | {r['sampler_steps']} | {g['density_hu']:.1f} | {f['density_hu']:.1f} | "
                     f"{b['density_hu']:.1f} | {g['diameter_mm']:.2f} | {f['diameter_mm']:.2f} | "
                     f"{v['prior']:.3f} | {v['cond']:.3f} | {v['cond'] / v['prior']:.2f} |")
    if record.get("resampled"):
        lines += ["", f"NAMD's model of {record['resample_run']} redrawn (same nodules, same seeds):", "",
                  "| sampler steps | eta | spacing | density (HU) | diameter (mm) |", "|---|---|---|---|---|"]
        lines += [f"| {r['steps']} | {r.get('eta', 0.0):g} | {r.get('spacing', 'leading')} | {r['density_hu']:.1f} | "
                  f"{r['diameter_mm']:.2f} |" for r in record["resampled"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished demo runs")
    parser.add_argument("--nodules", type=int, default=120)
    parser.add_argument("--resample", default=None, help="a run whose NAMD model redraws the nodules")
    parser.add_argument("--steps", default="5,10,20")
    parser.add_argument("--eta", default=None, help="DDIM eta values to redraw with, e.g. 0,0.5,1 "
                                                   "(default: the run's own)")
    parser.add_argument("--out", default=str(HERE / "results" / "nodule_density"))
    args = parser.parse_args()
    load = start_load()
    command = "python benchmarks/nodule_density.py --runs " + " ".join(args.runs) + (
        f" --resample {args.resample} --steps {args.steps}" if args.resample else "") + (
        f" --eta {args.eta}" if args.eta else "")
    record = {"command": command, "nodules": args.nodules,
              "runs": [one_run(Path(r), args.nodules) for r in args.runs]}
    if args.resample:
        record["resample_run"] = args.resample
        record["resampled"] = resample(Path(args.resample), args.nodules, [int(s) for s in args.steps.split(",")],
                                       [float(e) for e in args.eta.split(",")] if args.eta else None)
    record["machine"] = machine(load)
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
