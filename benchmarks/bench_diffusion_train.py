"""Training-step throughput of the two diffusion stages (prior: Equation 9, cond: Equation 10).

Runs the real tasks (namd.training.diffusion.PriorTask / CondTask) on the shared trainer with
random latents of the preset's shape; the cond stage includes the context encoder's forward and
backward pass into the soft prompts (MiniLM in the tiny preset), as in real training. Each stage
runs a short warm-up fit first, then the timed fit. Writes a markdown and a JSON file.

    python benchmarks/bench_diffusion_train.py --steps 30
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _results import load_line, machine, publish, start_load

HERE = Path(__file__).resolve().parent


def _pairs_frame(n: int) -> pd.DataFrame:
    """n pairs: crop 2i is the baseline of pair i, 2i+1 its follow-up, with EHR fields."""
    return pd.DataFrame({"baseline_index": np.arange(n) * 2, "followup_index": np.arange(n) * 2 + 1,
                         "patient_id": [f"p{i}" for i in range(n)], "nodule_id": "n",
                         "SCT_PRE_ATT": 1, "SCT_EPI_LOC": 1 + np.arange(n) % 6,
                         "SCT_LONG_DIA": 4.0 + np.arange(n) % 20, "SCT_PERP_DIA": 3.0 + np.arange(n) % 20,
                         "SCT_MARGINS": 1 + np.arange(n) % 3, "age": 55.0 + np.arange(n) % 20,
                         "diagemph": 0, "gender": 1 + np.arange(n) % 2, "famfather": 0, "fammother": 0,
                         "fambrother": 0, "famsister": 0, "famchild": 0})


def stage_tasks(preset: str, n: int):
    """(name, task, source, train config) for prior and cond with random latents."""
    from namd.cohort.imaging import ROTATIONS
    from namd.config import load_config
    from namd.models.context_factory import build_context_encoder
    from namd.models.schedules import training_scheduler
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape
    from namd.training.diffusion import CondTask, LatentCrops, LatentPairs, PriorTask
    from namd.training.latents import LatentStore

    cfg = load_config(preset)
    c, h, w = latent_shape(cfg.vae, cfg.data.crop_size)
    store = LatentStore(torch.randn(len(ROTATIONS), 2 * n, c, h, w), ROTATIONS, 1.0, "bench")
    encoder = build_context_encoder(cfg.text).eval()
    sched = training_scheduler(cfg.diffusion)
    ucfg, dim = cfg.diffusion.unet, encoder.dim
    prior = PriorTask(build_unet(ucfg, in_channels=c, out_channels=c, cross_attention_dim=dim, sample_size=h, seed=0),
                      sched, encoder.null_context(1, "cpu"), True)
    cond = CondTask(build_unet(ucfg, in_channels=2 * c, out_channels=c, cross_attention_dim=dim, sample_size=h, seed=0),
                    sched, encoder, False, True)
    return [("prior", prior, LatentCrops(store, np.arange(2 * n)), cfg.diffusion.prior),
            ("cond", cond, LatentPairs(store, _pairs_frame(n)), cfg.diffusion.cond)]


def measure(args: argparse.Namespace) -> list[dict]:
    """Seconds per step of each stage (after a warm-up fit)."""
    from namd.training.trainer import Trainer

    out = []
    for name, task, source, tcfg in stage_tasks(args.preset, args.n):
        batch = args.batch or tcfg.batch_size
        base = dict(batch_size=batch, checkpoint_every=10 ** 9, val_every=10 ** 9)
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(tcfg.model_copy(update={**base, "max_steps": 2}), Path(tmp) / "warm").fit(task, source)
            start = time.perf_counter()
            Trainer(tcfg.model_copy(update={**base, "max_steps": args.steps}), Path(tmp) / "run").fit(task, source)
            seconds = time.perf_counter() - start
        params = sum(p.numel() for p in task.unet.parameters())
        out.append({"stage": name, "batch_size": batch, "steps": args.steps, "seconds": seconds,
                    "steps_per_second": args.steps / seconds, "samples_per_second": args.steps * batch / seconds,
                    "unet_parameters": params,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return out


def markdown(record: dict) -> str:
    """The results table."""
    a, m = record["args"], record["machine"]
    rows = [f"| {r['stage']} | {r['batch_size']} | {r['steps_per_second']:.2f} | {r['samples_per_second']:.1f} | "
            f"{r['unet_parameters'] / 1e6:.2f} M | {r['peak_rss_mb']:.0f} |" for r in record["stages"]]
    return "\n".join([
        "# Diffusion training throughput", "",
        f"`python benchmarks/bench_diffusion_train.py --preset {a['preset']} --steps {a['steps']} "
        f"--threads {a['threads']}`", "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}. {load_line(m)}", "",
        "| stage | batch | steps / s | samples / s | U-Net size | peak RSS (MB, cumulative) |",
        "|---|---|---|---|---|---|", *rows, "",
        "cond includes the context encoder's forward and backward pass into the soft prompts.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--n", type=int, default=64, help="pairs of random latents")
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(HERE / "results" / "diffusion_train"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    load = start_load()
    stages = measure(args)
    record = {"args": vars(args), "stages": stages,
              "machine": machine(load)}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
