"""The lowest shuffled-baseline ratio any conditional model could reach at high noise, per VAE
(issue 28, fourth pass): how much of a follow-up's latent its own baseline cannot predict.

The synthetic cohort keeps, beside each test pair, M + H further one-year futures of the same
nodule drawn from the same generator (COHORT/known_futures.npy): each a new growth, shape
change, misregistration and scanner-noise field. Encoded with a run's VAE (scaled as its
diffusion stages see them), they give per pair the conditional mean m_i = E[z | baseline i]
and the within-pair variance w_i. As the noise level goes to its top, the v target tends to
-x0 and the best possible conditional model predicts m_i, so

    true loss     -> mean_i w_i                             (what no baseline explains)
    shuffled loss -> mean_i w_i + mean_{i != j} |m_i - m_j|^2   (another pair's baseline)

per latent element; their ratio is the floor of the ratio's top bands (the cond stage's
baseline_use.json reports t 600-1000 beside it). The between-pair term is corrected for the
finite number of futures (E |m^_i - m^_j|^2 = |m_i - m_j|^2 + 2 w / F). The same in HU,
without a VAE, for reference.

    python benchmarks/latent_floor.py --runs runs/before runs/after runs/soft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _results import machine, publish, start_load
from latent_smoothness import ROWS  # each VAE's (row, cond stage, prior stage)


def floor(z: np.ndarray) -> dict:
    """(P, F, ...) futures per pair -> within, between and their high-noise ratio floor."""
    z = z.reshape(z.shape[0], z.shape[1], -1).astype(np.float64)
    futures = z.shape[1]
    means = z.mean(1)
    within = float(z.var(1, ddof=1).mean())
    pairwise = 2.0 * means.var(0, ddof=1).mean()  # mean over i != j of (m_i - m_j)^2, per element
    between = float(pairwise - 2.0 * within / futures)
    return {"within": within, "between": between, "floor": within / (within + between)}


def one_run(run: Path, pairs: int) -> dict:
    """The floor through each VAE of a run, beside its cond stages' measured top band."""
    from namd.cohort.known_futures import read_known_futures
    from namd.config import load_config
    from namd.inference.sampler import encode_hu
    from namd.models.vae import load_trained_vae

    futures = read_known_futures(run / "cohort")
    if isinstance(futures, str):
        raise SystemExit(f"{run}: known futures {futures}")
    images = futures.images[:pairs]
    window = tuple(load_config("tiny", str(run / "config.yaml")).data.window_hu)
    out = {"run": str(run), "pairs": len(images), "futures": images.shape[1], "hu": floor(images)}
    for vae_dir, (_, cond, _) in ROWS.items():
        if not (run / vae_dir).is_dir():
            continue
        vae, scale = load_trained_vae(run / vae_dir)
        flat = images.reshape(-1, *images.shape[2:])
        z = encode_hu(vae, flat, scale, window, 32).numpy()
        use = json.loads((run / cond / "baseline_use.json").read_text())
        out[vae_dir] = {**floor(z.reshape(len(images), images.shape[1], *z.shape[1:])),
                        "psnr": json.loads((run / vae_dir / "report.json").read_text())["recon_psnr"],
                        "measured_ratio": use["ratio"], "measured_top_band": use["bands"][-1]["ratio"]}
    return out


def markdown(record: dict) -> str:
    """The floor per run and VAE, beside what the run's cond stages measured."""
    lines = ["| run | VAE | PSNR (dB) | within-pair | between-pair | high-noise floor | "
             "cond's t 600-1000 ratio | cond's ratio |", "|---" * 8 + "|"]
    for r in record["runs"]:
        lines.append(f"| {r['run']} | none (HU) | - | {r['hu']['within']:.0f} | {r['hu']['between']:.0f} | "
                     f"{r['hu']['floor']:.3f} | - | - |")
        for vae_dir in ROWS:
            if vae_dir in r:
                v = r[vae_dir]
                lines.append(f"| {r['run']} | {vae_dir} | {v['psnr']:.2f} | {v['within']:.4f} | "
                             f"{v['between']:.4f} | {v['floor']:.3f} | {v['measured_top_band']:.3f} | "
                             f"{v['measured_ratio']:.3f} |")
    first = record["runs"][0]
    return "\n".join([
        "# How much of a follow-up its baseline cannot predict, per VAE", "",
        f"`{record['command']}`", "",
        f"First {first['pairs']} test pairs, {first['futures']} known futures each (reference and held-out), "
        "encoded with each run's VAE (posterior means, scaled as the diffusion stages see them). "
        "Within-pair: mean variance of a latent element over one baseline's futures; between-pair: "
        "mean squared distance of two pairs' conditional means (finite-F corrected); floor = "
        "within / (within + between), what the best conditional model's true / shuffled loss "
        "tends to at the top noise levels. Beside it, the run's cond stage measured.", "", *lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished demo runs")
    parser.add_argument("--pairs", type=int, default=200, help="first test pairs with known futures")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "latent_floor"))
    args = parser.parse_args()
    load = start_load()
    results = [one_run(Path(r), args.pairs) for r in args.runs]
    command = f"python benchmarks/latent_floor.py --runs {' '.join(args.runs)} --pairs {args.pairs}"
    publish(Path(args.out), {"command": command, "runs": results, "machine": machine(load)}, markdown)


if __name__ == "__main__":
    main()
