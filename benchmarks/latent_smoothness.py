"""What a VAE's latents do to the diffusion stages (issue 28, third pass): per run and VAE, how
smooth the latents of the real follow-ups are, how much the decoded nodule loses when a latent
is contracted or blurred the way a diffusion model's samples are, and beside them what the run's
diffusion stages made of those latents (prior loss, the shuffled-baseline ratio and its lowest
band, the known-future energies of the rows on that VAE).

    python benchmarks/latent_smoothness.py --runs runs/before runs/after runs/soft

- neighbour correlation: the mean correlation of horizontally adjacent latent pixels, each
  channel centred on its mean over the crops (1 = smooth; white noise = 0);
- sample spread: per channel, the within-crop spatial std of the row's first 4 samples of each
  nodule (re-encoded) over that of the real follow-ups' latents (below 1 = contracted);
- contracted: every latent pulled 10% towards the channel means of the crops;
- blurred: a 3 x 3 mean filter on the latent.
Density and diameter come from the project's one nodule measurer over the first `--nodules`
test nodules' real follow-ups, decoded from their latents.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _results import load_line, machine, publish, start_load
from nodule_density import _measured

SAMPLES = {"vae": "samples", "vae_no_align": "samples_no_align"}
ROWS = {"vae": ("namd", "cond", "prior"), "vae_no_align": ("no_align", "cond_no_align", "prior_no_align")}


def neighbour_correlation(z) -> float:
    """Mean correlation of horizontally adjacent latent pixels, channels centred over the crops."""
    z = z - z.mean((0, 2, 3), keepdim=True)
    a, b = z[..., 1:].flatten(1), z[..., :-1].flatten(1)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def _stage_numbers(run: Path, vae_dir: str) -> dict:
    """What the run's diffusion stages and evaluation made of this VAE's latents."""
    row, cond, prior = ROWS[vae_dir]
    use = json.loads((run / cond / "baseline_use.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    kf = metrics["known_futures"]["rows"].get(row, {})
    report = json.loads((run / vae_dir / "report.json").read_text())
    return {"psnr": report["recon_psnr"], "knn_r2": report["knn_r2_diameter"],
            "prior_best_val": json.loads((run / prior / "run_info.json").read_text())["best_val"],
            "ratio": use["ratio"], "low_band": use["bands"][0],
            "energy": {k: kf.get(f"energy_{k}") for k in ("diameter_mm", "density_hu", "image_hu")}}


def one_vae(run: Path, vae_dir: str, n: int) -> dict:
    """Smoothness and decoder sensitivity of one VAE of a run, beside its stages' numbers."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.inference.sampler import decode_to_hu, encode_hu
    from namd.models.vae import load_trained_vae

    cohort = Cohort(run / "cohort")
    data = load_config("tiny", str(run / "config.yaml")).data
    window, spacing = tuple(data.window_hu), float(data.pixel_spacing_mm)
    index = pd.read_csv(run / "samples" / "index.csv").head(n)
    vae, scale = load_trained_vae(run / vae_dir)
    z = encode_hu(vae, cohort.images(index["followup_index"].to_numpy()), scale, window, 32)
    centre = z.mean((0, 2, 3), keepdim=True)
    variants = {"copy": z, "contracted": centre + 0.9 * (z - centre),
                "blurred": F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, 1)}
    samples = np.load(run / SAMPLES[vae_dir] / "samples.npy", mmap_mode="r")[:n, :4]
    generated = encode_hu(vae, np.ascontiguousarray(samples).reshape(-1, *samples.shape[2:]), scale, window, 32)
    spread = (generated.std((2, 3)).mean(0) / z.std((2, 3)).mean(0)).tolist()
    decoded = {k: _measured(decode_to_hu(vae, v, scale, window, 32)[:, None], spacing) for k, v in variants.items()}
    with torch.no_grad():
        smooth = neighbour_correlation(z)
    return {"run": str(run), "vae": vae_dir, "neighbour_corr": smooth, "decoded": decoded,
            "sample_spread": spread,
            **_stage_numbers(run, vae_dir)}


def markdown(record: dict) -> str:
    """The table of the result."""
    lines = ["# Latent smoothness and what the diffusion stages make of it", "", f"`{record['command']}`", "",
             f"First {record['nodules']} test nodules' real follow-ups, through each VAE. Density in HU, "
             "diameter in mm; energies are the known-future energy distances of the row on that VAE "
             "(lower = drawn more like the nodule's own futures).", "",
             "| run | VAE | PSNR | k-NN R² | neighbour corr | sample spread | density: copy / contracted / blurred | "
             "diameter: copy / contracted / blurred | prior best val | shuffled ratio | t < 100: true / "
             "shuffled / prior | energy: diameter / density / image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["vaes"]:
        d, b, e = r["decoded"], r["low_band"], r["energy"]
        lines.append(
            f"| {r['run']} | {r['vae']} | {r['psnr']:.2f} | {r['knn_r2']:.3f} | {r['neighbour_corr']:.3f} | "
            + " ".join(f"{v:.2f}" for v in r["sample_spread"]) + " | "
            + " / ".join(f"{d[k]['density_hu']:.0f}" for k in ("copy", "contracted", "blurred")) + " | "
            + " / ".join(f"{d[k]['diameter_mm']:.2f}" for k in ("copy", "contracted", "blurred"))
            + f" | {r['prior_best_val']:.3f} | {r['ratio']:.3f} | {b['true']:.2f} / {b['shuffled']:.2f} / "
            f"{b.get('prior', float('nan')):.2f} | "
            + " / ".join("-" if e[k] is None else f"{e[k]:.3g}" for k in ("diameter_mm", "density_hu", "image_hu"))
            + " |")
    return "\n".join(lines + ["", load_line(record["machine"])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished demo runs")
    parser.add_argument("--nodules", type=int, default=120)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "latent_smoothness"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    load = start_load()
    record = {"command": "python benchmarks/latent_smoothness.py --runs " + " ".join(args.runs),
              "nodules": args.nodules,
              "vaes": [one_vae(Path(r), v, args.nodules) for r in args.runs for v in ROWS]}
    record["machine"] = machine(load)
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
