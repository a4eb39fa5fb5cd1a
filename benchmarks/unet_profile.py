"""Where the tiny U-Net's sampling time goes, and two layouts that might have helped.

One forward pass of the preset's conditional U-Net (random weights: the cost does not depend
on them) at the sampling batch, timed as built, in channels-last memory format, and with
PyTorch's math attention kernel instead of its default; the FLOPs (torch's counter) give the
achieved rate, set against a 2048 x 2048 fp32 matmul on the same threads; the profiler's
table says which operators take the time. Writes a markdown and a JSON file.

    python benchmarks/unet_profile.py --batch 256 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import machine, publish, start_load
from bench_sampling import build

HERE = Path(__file__).resolve().parent


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(preset: str, batch: int, repeats: int) -> dict:
    """Seconds per forward pass of each variant, FLOPs, the matmul rate and the operator table."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    _, _, unet, encoder, _, _, shape = build(preset, 1)
    x = torch.randn(batch, 2 * shape[0], *shape[1:])
    ctx = torch.randn(batch, encoder.n_tokens, encoder.dim)
    t = torch.full((batch,), 500)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=ctx)
        flops = counter.get_total_flops()
        seconds = {"as built": best_seconds(lambda: unet(x, t, encoder_hidden_states=ctx), repeats)}
        with sdpa_kernel(SDPBackend.MATH):
            seconds["math attention kernel"] = best_seconds(
                lambda: unet(x, t, encoder_hidden_states=ctx), repeats)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            unet(x, t, encoder_hidden_states=ctx)
        last = unet.to(memory_format=torch.channels_last)
        xl = x.to(memory_format=torch.channels_last)
        seconds["channels-last"] = best_seconds(lambda: last(xl, t, encoder_hidden_states=ctx), repeats)
        a = torch.randn(2048, 2048)
        matmul = 2 * 2048 ** 3 / best_seconds(lambda: a @ a, 10)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "share": e.self_cpu_time_total / total} for e in events[:8]]
    return {"flops_per_sample": flops / batch, "seconds": seconds, "matmul_gflops": matmul / 1e9,
            "gflops": {k: flops / s / 1e9 for k, s in seconds.items()}, "ops": ops}


def markdown(r: dict) -> str:
    """The variants and the operator table."""
    a = r["args"]
    lines = ["# The tiny U-Net's forward pass", "",
             f"`python benchmarks/unet_profile.py --preset {a['preset']} --batch {a['batch']} "
             f"--threads {a['threads']}`: {r['flops_per_sample'] / 1e6:.1f} MFLOP per sample "
             f"(torch's FLOP counter); a 2048 x 2048 fp32 matmul reaches "
             f"{r['matmul_gflops']:.0f} GFLOP/s on the same threads.", "",
             "| variant | ms per sample | GFLOP/s | share of the matmul rate |", "|---|---|---|---|"]
    for name, sec in r["seconds"].items():
        g = r["gflops"][name]
        lines.append(f"| {name} | {1e3 * sec / a['batch']:.3f} | {g:.0f} | {100 * g / r['matmul_gflops']:.0f}% |")
    lines += ["", "Operators by self CPU time (one forward pass as built):", "", "| operator | share |",
              "|---|---|", *[f"| `{o['op']}` | {100 * o['share']:.1f}% |" for o in r["ops"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=256, help="latents per call (sampling.max_batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(HERE / "results" / "unet_profile"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = start_load()
    record = {"args": vars(args), **measure(args.preset, args.batch, args.repeats)}
    record["machine"] = machine(before)
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
