"""How many crops per VAE call build the latent cache fastest on a CPU (`diffusion.encode_batch`).

The prior stage encodes every crop of the cohort under every rotation once (1,600 crops x 5
rotations in the demo). On one CPU thread a large batch is slower per crop: its activations
(64 x 64 x 16 channels per crop at the first level) no longer fit the core's cache. Times the
posterior-mean encode of the run's trained VAE (or a fresh one of the preset's size: the cost
does not depend on the weights) per crop at each batch size, best of `--repeats`.

    python benchmarks/encode_batch.py --run runs/demo_fast --threads 1 \
        --out benchmarks/results/encode_batch
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import machine, publish, start_load

BATCHES = (4, 8, 16, 32, 64, 128)


def build_vae(run: str | None) -> torch.nn.Module:
    """The run's trained VAE, else a random one of the tiny preset's size."""
    if run:
        from namd.models.vae import load_trained_vae

        return load_trained_vae(f"{run}/vae", "cpu")[0]
    from namd.config import load_config
    from namd.models.vae import build_vae_from_config

    return build_vae_from_config(load_config("tiny").vae).eval()


def ms_per_crop(vae: torch.nn.Module, batch: int, crops: int, repeats: int) -> float:
    """Milliseconds per crop to encode `crops` crops in calls of `batch` (best of `repeats`)."""
    from namd.models.vae import encode

    x = torch.rand(crops, int(vae.config.in_channels), 64, 64) * 2 - 1
    best = float("inf")
    with torch.inference_mode():
        encode(vae, x[:batch])
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, crops, batch):
                encode(vae, x[i:i + batch])
            best = min(best, time.perf_counter() - start)
    return 1e3 * best / crops


def markdown(r: dict) -> str:
    """The table of batch sizes."""
    a = r["args"]
    fastest = min(r["ms_per_crop"], key=r["ms_per_crop"].get)
    lines = ["# Crops per VAE call for the latent cache", "",
             f"`python benchmarks/encode_batch.py{' --run ' + a['run'] if a['run'] else ''} "
             f"--threads {a['threads']}`: {a['crops']} crops encoded (posterior mean) in calls of "
             f"each batch size, best of {a['repeats']}.", "",
             "| crops per call | ms per crop | vs the fastest |", "|---|---|---|"]
    for batch, ms in r["ms_per_crop"].items():
        lines.append(f"| {batch} | {ms:.2f} | {ms / r['ms_per_crop'][fastest]:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, time each batch size, publish."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run directory whose vae/ to time (default: random tiny VAE)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crops", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = start_load()
    vae = build_vae(args.run)
    times = {str(b): ms_per_crop(vae, b, args.crops, args.repeats) for b in BATCHES}
    publish(args.out, {"args": vars(args), "ms_per_crop": times, "machine": machine(before)}, markdown)


if __name__ == "__main__":
    main()
