"""Benchmark of the nodule-aligned VAE stage: training throughput, and aligned vs --method no_align.

    python benchmarks/bench_vae.py --steps 300 --write benchmarks/results/vae.md

1. Throughput: training steps of the VAE task (forward, Equation 6, backward, AdamW) on random
   crops, for the benchmark network and the paper's SD1.5 VAE (crops/s, peak memory).
2. Comparison: a synthetic cohort (namd.cohort.synthetic), then the VAE stage twice with the
   same data, seed, steps and learning rate: aligned (L_align + L_pred) and the paper's
   "w/o L_align" ablation. Each stage writes its report; the table puts them side by side.
   `--seeds 23,24,25` repeats it per training seed; `--pretrain-steps N` first trains one
   unaligned VAE and starts both variants from it (the paper fine-tunes a pretrained SD1.5 VAE):

    python benchmarks/bench_vae.py --steps 300 --pretrain-steps 1000 --seeds 23,24,25 \
        --write benchmarks/results/vae_finetune.md
Runs on CUDA when available, else CPU. Wall time depends on other work on the machine, so the
process CPU time is given too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import load_line, machine, start_load

from namd.run.provenance import atomic_write_text

KEYS = ("recon_mae", "recon_psnr", "recon_ssim", "distance_spearman", "distance_spearman_flat",
        "knn_r2_diameter", "knn_r2_diameter_flat", "probe_auroc", "linear_probe_auroc")


def describe_machine() -> str:
    """CPU/GPU, core count and versions, for the results file (the load: `_results.machine`)."""
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPUs ({cpu}), {gpu}, torch {torch.__version__}, Python "
            f"{platform.python_version()}")


def bench_overrides(args: argparse.Namespace) -> list[str]:
    """The config of the comparison (also used for the throughput of the benchmark network)."""
    return [f"data.crop_size={args.crop}", f"data.pixel_spacing_mm={args.spacing}",
            f"vae.block_out_channels={args.channels}", "vae.layers_per_block=1", "vae.norm_num_groups=8",
            f"vae.train.max_steps={args.steps}", f"vae.train.batch_size={args.batch}", f"vae.train.lr={args.lr}",
            f"vae.train.val_every={max(1, args.steps // 3)}", "vae.train.val_batches=2",
            f"vae.train.checkpoint_every={args.steps}", f"synth.pairs={args.pairs}",
            f"synth.unpaired={args.unpaired}", "synth.split_fractions=[0.6,0.2,0.2]"]


def throughput(preset: str, overrides: list[str], crop: int, batch: int, steps: int) -> dict:
    """Crops per second and peak memory of `steps` training steps (after one warm-up step)."""
    from namd.config import load_config
    from namd.models.probe import LinearProbe
    from namd.models.vae import build_vae, latent_shape
    from namd.training.vae import VAETask

    cfg = load_config(preset, overrides=overrides).vae
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae, probe = build_vae(cfg).to(device), LinearProbe(latent_shape(cfg, crop)).to(device)
    task = VAETask(vae, probe, cfg, True, (0.6, 3.0))
    opt = torch.optim.AdamW([*vae.parameters(), *probe.parameters()], lr=cfg.train.lr)
    g = torch.Generator().manual_seed(0)
    data = {"image": (torch.rand(batch, cfg.in_channels, crop, crop) * 2 - 1).to(device),
            "features": torch.randn(batch, 5, device=device),
            "label": (torch.rand(batch) < 0.2).float().to(device)}

    def step() -> None:
        loss, _ = task.loss(data, g, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in vae.parameters())
    return {"network": f"{preset} {tuple(cfg.block_out_channels)}", "params_m": params / 1e6, "crop": crop,
            "batch": batch, "steps": steps, "crops_per_s_wall": batch * steps / wall,
            "crops_per_s_cpu": batch * steps / cpu if device.type == "cpu" else None,
            "peak_memory_gb": peak / 2**30, "memory_kind": "CUDA max allocated" if device.type == "cuda"
            else "process peak RSS"}


def compare(root: Path, cohort: Path, overrides: list[str], variants: tuple[bool, ...] = (False, True)) -> dict:
    """The aligned and the ablation VAE stage on the shared cohort; their reports."""
    from namd.training.vae import run_stage

    run, config = _run(root, cohort, overrides)
    out = {}
    for no_align in variants:
        start, cpu = time.perf_counter(), time.process_time()
        stage = run_stage(config, run, method="no_align" if no_align else "namd")
        report = json.loads((stage / "report.json").read_text())
        report.update(wall_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu)
        out["no_align" if no_align else "aligned"] = report
    return out


def pretrain(root: Path, cohort: Path, overrides: list[str], steps: int, lr: float) -> tuple[Path, dict]:
    """An unaligned VAE trained `steps` steps on the shared cohort, for both variants to start
    from: the CPU stand-in for the pretrained SD1.5 VAE the paper fine-tunes. Returns its
    diffusers folder and its report."""
    from namd.training.vae import run_stage

    over = [*overrides, f"vae.train.max_steps={steps}", f"vae.train.lr={lr}",
            f"vae.train.val_every={max(1, steps // 3)}", f"vae.train.checkpoint_every={steps}"]
    run, config = _run(root, cohort, over)
    start = time.perf_counter()
    stage = run_stage(config, run, method="no_align")
    report = json.loads((stage / "report.json").read_text())
    report.update(steps=steps, lr=lr, wall_s=time.perf_counter() - start)
    return stage / "autoencoder", report


def make_cohort(path: Path, overrides: list[str]) -> float:
    """The benchmark's synthetic cohort, generated once for the pretraining and every seed;
    returns the seconds it took."""
    from namd.cohort.synthetic import generate_cohort
    from namd.config import load_config

    config = load_config("tiny", overrides=overrides)
    start = time.perf_counter()
    generate_cohort(path, config.synth, config.data)
    return time.perf_counter() - start


def _run(root: Path, cohort: Path, overrides: list[str]):
    """A run folder whose cohort is the shared one, and its config."""
    from namd.config import load_config
    from namd.run.layout import RunDir

    run = RunDir(root / "run")
    run.path.mkdir(parents=True)
    (run.path / "cohort").symlink_to(cohort.resolve(), target_is_directory=True)
    return run, load_config("tiny", overrides=overrides)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(command: str, through: list[dict], comp: dict | None, args: argparse.Namespace,
             pre: dict | None, mach: dict) -> str:
    """The results file; `mach` is the `_results.machine` record of the run (threads, load)."""
    lines = ["# Benchmark: the nodule-aligned VAE stage", "", f"- command: `{command}`",
             f"- machine: {describe_machine()}", f"- {load_line(mach)}", ""]
    if through:
        lines += ["## Training-step throughput (forward, Equation 6, backward, AdamW; random crops)", "",
                  "| network | params (M) | crop | batch | steps | crops/s (wall) | crops/s (CPU time) | peak memory (GB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {t['network']} | {t['params_m']:.2f} | {t['crop']} | {t['batch']} | {t['steps']} | "
                  f"{t['crops_per_s_wall']:.1f} | {_fmt(t['crops_per_s_cpu'], 1)} | {t['peak_memory_gb']:.2f} "
                  f"({t['memory_kind']}) |" for t in through]
        lines.append("")
    if comp:
        a, n = comp["aligned"], comp.get("no_align")
        side = args.crop // 2 ** (len(json.loads(args.channels)) - 1)
        lines += ["## Aligned vs --method no_align (same synthetic cohort, seed, steps, learning rate)", "",
                  f"- cohort: {args.pairs} pairs + {args.unpaired} unpaired crops, {args.crop} x {args.crop} at "
                  f"{args.spacing} mm, split 60/20/20 by patient; report on the val split ({a['n_crops']} crops, "
                  f"{a['n_complete_features']} with all five nodule features, {a['n_labelled']} labelled)",
                  f"- network: block_out_channels {args.channels}, 1 block per level, latent 4 x "
                  f"{side} x {side}; {args.steps} steps of "
                  f"batch {args.batch}, lr {args.lr}, rotation augmentation, seed {comp['seed']}",
                  f"- wall time: cohort {comp['cohort_s']:.0f} s, aligned stage {a['wall_s']:.0f} s "
                  f"(CPU {a['cpu_s']:.0f} s)" + (f", ablation stage {n['wall_s']:.0f} s (CPU {n['cpu_s']:.0f} s)"
                                                 if n else ""),
                  f"- extra settings: {' '.join(args.set) or 'none'}",
                  "- start: " + ("random initialisation (from scratch)" if pre is None else
                                 f"both variants fine-tune one unaligned VAE pretrained {pre['steps']} steps at "
                                 f"lr {pre['lr']} on the same cohort (val PSNR {pre['recon_psnr']:.2f} dB, "
                                 f"{pre['wall_s']:.0f} s): the CPU stand-in for the SD1.5 VAE the paper "
                                 "fine-tunes"), "",
                  "| metric | aligned | w/o L_align | difference |", "|---|---:|---:|---:|"]
        for key in KEYS:
            other = n[key] if n else None
            diff = None if a[key] is None or other is None else a[key] - other
            lines.append(f"| {key} | {_fmt(a[key])} | {_fmt(other)} | {_fmt(diff)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def seeds_markdown(per_seed: list[dict]) -> str:
    """One row per training seed, and the aligned - ablation differences as mean and spread."""
    if len(per_seed) < 2 or any("no_align" not in r for r in per_seed):
        return ""
    cols = ("recon_psnr", "distance_spearman", "knn_r2_diameter", "probe_auroc")
    lines = ["## Over training seeds (aligned / w/o L_align; the first table is the first seed)", "",
             "| seed | " + " | ".join(cols) + " | PSNR gap (dB) |", "|---|" + "---:|" * (len(cols) + 1)]
    for r in per_seed:
        a, n = r["aligned"], r["no_align"]
        lines.append(f"| {r['seed']} | " + " | ".join(f"{_fmt(a[c])} / {_fmt(n[c])}" for c in cols)
                     + f" | {_fmt(n['recon_psnr'] - a['recon_psnr'], 2)} |")
    diffs = {c: np.array([r["aligned"][c] - r["no_align"][c] for r in per_seed], dtype=float) for c in cols}
    lines += ["", "aligned - ablation, mean ± std over seeds: " + "; ".join(
        f"{c} {d.mean():+.3f} ± {d.std(ddof=1):.3f}" for c, d in diffs.items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the requested parts and print (and optionally write) the markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--spacing", type=float, default=1.4, help="mm per pixel (32 px x 1.4 mm = 45 mm)")
    parser.add_argument("--channels", default="[16,32,32]")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--unpaired", type=int, default=200)
    parser.add_argument("--throughput-steps", type=int, default=3)
    parser.add_argument("--paper-throughput", action="store_true",
                        help="also time the SD1.5-sized VAE on 64 x 64 crops (slow on a CPU)")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--aligned-only", action="store_true", help="train only the aligned stage")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="first train an unaligned VAE this many steps (at --pretrain-lr) and start "
                        "both variants from it, as the paper fine-tunes SD1.5; 0 = from scratch")
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--seeds", default="23", help="training seeds, comma-separated: the comparison is "
                        "repeated for each (same cohort) and the PSNR gap summarised over them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the comparison, e.g. vae.lambda_pred=0")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on a shared 2-core machine 1 is several times faster)")
    parser.add_argument("--keep", default=None, help="keep the run directory here instead of a temp dir")
    parser.add_argument("--write", default=None, help="markdown file to (over)write")
    args = parser.parse_args()
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)
    before = start_load()
    command = " ".join(["python", *sys.argv])
    over = bench_overrides(args) + args.set
    variants = (False,) if args.aligned_only else (False, True)
    through = [throughput("tiny", over, args.crop, args.batch, args.throughput_steps)]
    if args.paper_throughput:
        through.append(throughput("paper", [], 64, args.batch, args.throughput_steps))
    comp, per_seed, pre = None, [], None
    if not args.skip_compare:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.keep or tmp)
            cohort_s = make_cohort(work / "cohort", over)
            if args.pretrain_steps:
                path, pre = pretrain(work / "pretrain", work / "cohort", over, args.pretrain_steps, args.pretrain_lr)
                over = [*over, f"vae.pretrained={path}"]
            for seed in [int(s) for s in args.seeds.split(",")]:
                result = compare(work / f"seed{seed}", work / "cohort", [*over, f"vae.train.seed={seed}"], variants)
                per_seed.append({"seed": seed, **result})
        comp = {**per_seed[0], "cohort_s": cohort_s}
    mach = machine(before)
    text = markdown(command, through, comp, args, pre, mach) + seeds_markdown(per_seed)
    print(text)
    if args.write:
        atomic_write_text(Path(args.write), text)
        atomic_write_text(Path(args.write).with_suffix(".json"), json.dumps(
            {"throughput": through, "pretrain": pre, "compare": comp, "seeds": per_seed, "machine": mach},
            indent=2, default=float) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
