"""Do sampled latents look like real ones? Per-channel statistics of the latents the prior and the
conditional model sample, against the cached latents of the cohort, and how far conditional
samples lie from their own baseline (a real follow-up lies about 0.01-0.02 from it).

    python benchmarks/sampled_latent_stats.py --run runs/demo [--n 8] [--png out.png]

A checkerboard in decoded samples with clean VAE reconstructions means the diffusion produces
latents the decoder never saw: their per-channel std and high-frequency energy (mean squared
difference of horizontal neighbours) then exceed the real latents'. Validation pairs, DDIM with
the run's sampling settings, K = 1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import yaml
from _results import load_line, machine, start_load


def stats(z: torch.Tensor) -> dict:
    """Per-channel mean and std, and the high-frequency energy, of latents (N, C, h, w)."""
    return {"mean": [round(float(v), 3) for v in z.mean((0, 2, 3))],
            "std": [round(float(v), 3) for v in z.std((0, 2, 3))],
            "hf_energy": round(float(z.diff(dim=-1).pow(2).mean()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=8, help="validation pairs")
    p.add_argument("--png", default=None, help="also draw VAE(z1), VAE(z2), cond and prior samples")
    args = p.parse_args()
    before = start_load()

    from namd.cohort.store import Cohort
    from namd.config import load_config, methods
    from namd.inference.sampler import (
        Conditioning,
        FollowUpSampler,
        pairs_to_sample,
        sample_latents,
    )
    from namd.models.schedules import load_scheduler_config
    from namd.models.unet import load_unet
    from namd.run.layout import RunDir
    from namd.training.latents import cache_path, load_or_build

    run = RunDir(args.run)
    cfg = load_config(base=yaml.safe_load((run.path / "config.yaml").read_text()))
    store = load_or_build(cache_path(run.path, "vae"), run.stage("cohort"), run.stage("vae"),
                          cfg.data.window_hu)
    cohort = Cohort(run.stage("cohort"))
    pairs = pairs_to_sample(cohort, "val").iloc[:args.n]
    z1 = store.upright(pairs["baseline_index"].to_numpy())
    z2 = store.upright(pairs["followup_index"].to_numpy())
    sampling = cfg.sampling.model_copy(update={"k": 1})
    sampler = FollowUpSampler.from_run(run, methods.get(methods.REFERENCE).uses, cfg)
    null = sampler.encoder.null_context(1, device="cpu")[0]
    prior = load_unet(run.stage("prior"))
    keys = [f"prior-{i}" for i in range(len(pairs))]
    unconditional = Conditioning(keys, None, null.expand(len(pairs), -1, -1), null)
    zp = sample_latents(prior, load_scheduler_config(run.stage("prior")), unconditional, sampling,
                        tuple(store.shape), show_progress=False)[:, 0]
    cond = sampler.conditioning(list(pairs["pair_id"]), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(row) for _, row in pairs.iterrows()])
    zc = sampler.generate(cond, sampling, show_progress=False)[:, 0]
    every = store.upright(np.arange(store.latents.shape[1]))
    record = {"run": args.run, "n": len(pairs), "real": stats(every), "prior_samples": stats(zp),
              "cond_samples": stats(zc),
              "msq_cond_sample_to_baseline": round(float((zc - z1).pow(2).mean()), 4),
              "msq_followup_to_baseline": round(float((z2 - z1).pow(2).mean()), 4)}
    print(json.dumps(record, indent=1))
    if args.png:
        from matplotlib.figure import Figure

        rows = [sampler.decode(z) for z in (z1, z2, zc, zp)]
        fig = Figure(figsize=(2 * len(pairs), 8))
        axes = fig.subplots(4, len(pairs), squeeze=False)
        for r, (name, crops) in enumerate(zip(("VAE(z1)", "VAE(z2)", "cond", "prior"), rows, strict=True)):
            for j, ax in enumerate(axes[r]):
                ax.imshow(crops[j], cmap="gray", vmin=cfg.data.window_hu[0], vmax=cfg.data.window_hu[1])
                ax.axis("off")
            axes[r, 0].set_title(name, loc="left")
        fig.savefig(args.png, dpi=60)
    print(load_line(machine(before)))


if __name__ == "__main__":
    main()
