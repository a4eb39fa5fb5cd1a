"""Where batching stops paying: the conditional U-Net's cost per sample against the batch size.

The sampling benchmark compares namd's batched K-sample generation with the authors' loop,
which already denoises 64 nodules per U-Net call. This script times one U-Net call (the
conditional model: 8 input channels, cross-attention to C) at several batch sizes and with
both attention kernels (PyTorch SDPA, diffusers' classic bmm processor), so the ceiling of any
batching gain on this machine is written down rather than guessed.

    python benchmarks/bench_unet_batch.py [--preset tiny] [--threads 2] [--batches 1 16 64 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import load_line, machine, publish, start_load

HERE = Path(__file__).resolve().parent


def time_call(unet: torch.nn.Module, batch: int, latent: tuple[int, int, int], dim: int, m: int,
              repeats: int) -> float:
    """Best-of-`repeats` milliseconds per sample of one U-Net call at `batch`."""
    c, h, w = latent
    x, ctx = torch.randn(batch, 2 * c, h, w), torch.randn(batch, m, dim)
    t = torch.full((batch,), 500)
    best = float("inf")
    with torch.inference_mode():
        unet(x, t, encoder_hidden_states=ctx)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx)
            best = min(best, time.perf_counter() - start)
    return 1000.0 * best / batch


def run(preset: str, threads: int, batches: list[int], repeats: int) -> dict:
    """Time every batch size with both attention processors."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from namd.config import load_config
    from namd.models.text import model_hidden_size
    from namd.models.unet import build_unet

    torch.set_num_threads(threads)
    cfg = load_config(preset)
    side = cfg.data.crop_size // 2 ** (len(cfg.vae.block_out_channels) - 1)
    latent = (cfg.vae.latent_channels, side, side)
    dim, m = model_hidden_size(cfg.text.model), cfg.text.n_prompt_sets
    unet = build_unet(cfg.diffusion.unet, in_channels=2 * latent[0], out_channels=latent[0],
                      cross_attention_dim=dim, sample_size=side, seed=0).eval()
    rows = []
    for name, processor in (("sdpa", AttnProcessor2_0()), ("classic", AttnProcessor())):
        unet.set_attn_processor(processor)
        for b in batches:
            rows.append({"attention": name, "batch": b,
                         "ms_per_sample": time_call(unet, b, latent, dim, m, repeats)})
    return {"preset": preset, "threads": threads, "latent": list(latent), "rows": rows,
            "params_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def markdown(record: dict) -> str:
    """The table and what it means for the sampling comparison."""
    mach = record["machine"]
    lines = ["# U-Net cost per sample against batch size", "",
             f"`{record['command']}`", "",
             f"Conditional U-Net of the `{record['preset']}` preset ({record['params_m']:.2f} M "
             f"parameters, latent {' x '.join(map(str, record['latent']))}), one call at t = 500, "
             f"{record['threads']} torch threads. Machine: {mach['platform']}, {mach['cpus']} CPUs, "
             f"torch {mach['torch']}. {load_line(mach)}", "",
             "| attention | batch | ms per sample |", "|---|---:|---:|"]
    lines += [f"| {r['attention']} | {r['batch']} | {r['ms_per_sample']:.2f} |" for r in record["rows"]]
    sdpa = {r["batch"]: r["ms_per_sample"] for r in record["rows"] if r["attention"] == "sdpa"}
    if 64 in sdpa:
        best = min(sdpa.values())
        lines += ["", f"The authors' loop denoises 64 nodules per call ({sdpa[64]:.2f} ms per "
                  f"sample); the cheapest batch here costs {best:.2f} ms, so on this machine larger "
                  f"batches can speed the U-Net up by at most {sdpa[64] / best:.2f}x. Any larger "
                  "gain of namd's sampler comes from computing latents and contexts once."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, measure, publish."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "unet_batch"))
    args = parser.parse_args()
    before = start_load()
    record = run(args.preset, args.threads, args.batches, args.repeats)
    record["machine"] = machine(before)
    record["command"] = "python benchmarks/bench_unet_batch.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in (("preset", args.preset), ("threads", args.threads), ("batches", args.batches)))
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
