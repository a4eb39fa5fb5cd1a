"""The constants of namd.inference.estimate (the time a sampling request will take), measured,
and the estimate checked against the measured time at other network sizes.

Random networks of each size (the cost does not depend on the weights) are saved as a model
folder's unet/ and vae/; `model_cost` counts their FLOPs; the denoising loop
(`sample_latents`, DDIM) and the decode (`decode_to_hu`) are timed on N K random latents.
The rates are fitted on the tiny preset's networks (U-Net FLOP/s and decode FLOP/s of one
thread: run it with --threads 1) and on the helpers' smallest U-Net (the fixed cost of one
U-Net call); the estimate's time (with the constants namd.inference.estimate holds) is
compared with the measured one at every size.

    python benchmarks/sampling_estimate.py --threads 2 --out benchmarks/results/sampling_estimate
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, publish, start_load

from namd.config import load_config, validated_update
from namd.inference.estimate import Request, estimate, model_cost
from namd.inference.sampler import Conditioning, decode_to_hu, sample_latents
from namd.models.schedules import training_scheduler
from namd.models.unet import build_unet
from namd.models.vae import build_vae

CONTEXT = (8, 64)  # m tokens x D of the context (cross-attention), the same at every size
# name -> (U-Net blocks, VAE blocks, crop size, nodules x K, steps, max_batch)
SIZES = {"helpers (call cost)": ((8, 16), (8, 8, 8), 16, 64, 10, 1),
         "tiny preset (rates)": ((32, 64, 64), (16, 32, 64, 64), 64, 512, 10, 256),
         "mid": ((64, 128, 256), (32, 64, 128, 128), 64, 128, 5, 64),
         "paper U-Net and VAE": ((320, 640, 1280, 1280), (128, 256, 512, 512), 64, 4, 2, 4)}


def save_networks(folder: Path, unet_blocks: tuple, vae_blocks: tuple, crop: int) -> dict[str, Path]:
    """Random U-Net and VAE of the given blocks, saved as a model folder's unet/ and vae/."""
    cfg = load_config("tiny")
    vae_cfg = validated_update(cfg.vae, {"block_out_channels": list(vae_blocks),
                                         "norm_num_groups": 32 if min(vae_blocks) % 32 == 0 else 4})
    groups = 32 if min(unet_blocks) % 32 == 0 else 4
    unet_cfg = validated_update(cfg.diffusion.unet, {"block_out_channels": list(unet_blocks),
                                                     "norm_num_groups": groups})
    side = crop // 2 ** (len(vae_blocks) - 1)
    latent = vae_cfg.latent_channels
    unet = build_unet(unet_cfg, in_channels=2 * latent, out_channels=latent,
                      cross_attention_dim=CONTEXT[1], sample_size=side)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    build_vae(vae_cfg).save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "context_encoder").mkdir(exist_ok=True)
    (folder / "context_encoder" / "context_encoder.json").write_text(f'{{"n_tokens": {CONTEXT[0]}}}')
    return {"unet/config.json": folder / "unet" / "config.json",
            "unet/diffusion_pytorch_model.safetensors": folder / "unet" / "diffusion_pytorch_model.safetensors",
            "vae/config.json": folder / "vae" / "config.json",
            "vae/diffusion_pytorch_model.safetensors": folder / "vae" / "diffusion_pytorch_model.safetensors",
            "context_encoder/context_encoder.json": folder / "context_encoder" / "context_encoder.json"}


def timed(folder: Path, n: int, steps: int, max_batch: int) -> tuple[float, float]:
    """Seconds of the denoising loop and of the decode of n latents."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    cfg = validated_update(load_config("tiny").sampling, {"k": n, "steps": steps, "max_batch": max_batch})
    side, c = int(unet.config.sample_size), int(unet.config.out_channels)
    cond = Conditioning(["x"], torch.randn(1, c, side, side), torch.randn(1, *CONTEXT), torch.zeros(CONTEXT))
    schedule = dict(training_scheduler(load_config("tiny").diffusion).config)
    start = time.perf_counter()
    latents = sample_latents(unet, schedule, cond, cfg, (c, side, side), show_progress=False)
    loop = time.perf_counter() - start
    start = time.perf_counter()
    decode_to_hu(vae, latents[0], 1.0, (-1000.0, 400.0), 16)
    return loop, time.perf_counter() - start


def main() -> None:
    """Measure every size, fit the constants, compare the estimate with the measured times."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before, rows = start_load(), []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ub, vb, crop, n, steps, batch) in SIZES.items():
            folder = Path(tmp) / name.split()[0]
            cost = model_cost(save_networks(folder, ub, vb, crop))
            loop, dec = timed(folder, n, steps, batch)
            est = estimate(Request(1, n, steps, crop, max_batch=batch), cost, "cpu")
            rows.append({"size": name, "unet_mflop": cost.unet_flops / 1e6,
                         "decode_mflop": cost.decode_flops / 1e6, "latents": n, "steps": steps,
                         "max_batch": batch, "calls": steps * math.ceil(n / batch),
                         "loop_s": loop, "decode_s": dec, "measured_s": loop + dec,
                         "estimated_s": est.seconds})
    fit = rows[1]
    record = {"rows": rows, "threads": args.threads, "machine": machine(before, args.threads),
              "fitted": {"unet_gflops_per_thread": fit["latents"] * fit["steps"] * fit["unet_mflop"]
                         / 1e3 / fit["loop_s"] / args.threads,
                         "decode_gflops_per_thread": fit["latents"] * fit["decode_mflop"] / 1e3
                         / fit["decode_s"] / args.threads,
                         "seconds_per_call_small_unet": rows[0]["loop_s"] / rows[0]["calls"]}}
    publish(args.out, record, markdown)


def markdown(record: dict) -> str:
    """The measured and estimated times per size, and the fitted constants."""
    import namd.inference.estimate as est

    f = record["fitted"]
    lines = ["# What a sampling request costs: the estimate's constants", "",
             f"`python benchmarks/sampling_estimate.py --threads {record['threads']}`", "",
             f"Fitted: U-Net {f['unet_gflops_per_thread']:.1f} GFLOP/s per thread, VAE decode "
             f"{f['decode_gflops_per_thread']:.1f} GFLOP/s per thread (tiny preset), "
             f"{1e3 * f['seconds_per_call_small_unet']:.1f} ms per call of the smallest U-Net. "
             f"namd.inference.estimate holds {est.UNET_FLOPS / 1e9:g} and {est.DECODE_FLOPS / 1e9:g} "
             f"GFLOP/s and {1e3 * est.CALL_SECONDS:g} ms (between this run and more loaded ones: "
             "an estimate that errs long on a quiet machine, short on a busy one); the estimated "
             "column uses them.", "",
             "| networks | U-Net MFLOP / latent-step | decode MFLOP / crop | latents x steps (batch) "
             "| loop s | decode s | measured s | estimated s | measured / estimated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['size']} | {r['unet_mflop']:.1f} | {r['decode_mflop']:.1f} | "
                     f"{r['latents']} x {r['steps']} ({r['max_batch']}) | {r['loop_s']:.2f} | "
                     f"{r['decode_s']:.2f} | {r['measured_s']:.2f} | {r['estimated_s']:.2f} | "
                     f"{r['measured_s'] / r['estimated_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
