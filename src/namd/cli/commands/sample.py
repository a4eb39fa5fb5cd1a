"""`namd sample --run RUN`: K virtual one-year follow-ups for every nodule of a split.

Reads RUN/cohort and the models of the chosen method of the table (namd.config.methods), and
writes RUN/samples (RUN/samples_<method> with --method, e.g. samples_no_align): samples.npy
(N, K, H, W) in HU, index.csv, PNG grids and run_info.json. Paper settings: K = 20, DDIM with 50
steps, eta = 0, guidance 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from namd.cli.options import add_config_args, add_method_arg
from namd.config import methods
from namd.run.layout import RunDir

# command-line flag -> sampling config field
FLAGS = {"split": "split", "k": "k", "steps": "steps", "scheduler": "scheduler",
         "guidance_scale": "guidance_scale", "eta": "eta", "max_batch": "max_batch",
         "seed": "seed", "grids": "grids"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd sample`."""
    p = sub.add_parser("sample", help="draw K virtual follow-ups per nodule", description=__doc__)
    p.add_argument("--run", required=True, help="run directory (cohort, vae, cond)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None, help="pairs to sample (default test)")
    p.add_argument("--k", type=int, default=None, help="samples per nodule (paper: 20)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (paper: 50); a compared "
                   "method's own (e.g. flux.sampling_steps) for its --method")
    p.add_argument("--scheduler", choices=("ddim", "dpmsolver++"), default=None,
                   help="DDIM (paper) or DPM-Solver++ (fewer steps)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance with the null context (paper: 1 = none)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (paper: 0)")
    p.add_argument("--max-batch", type=int, default=None, help="latents per U-Net call")
    p.add_argument("--seed", type=int, default=None, help="base seed of the per-sample generators")
    p.add_argument("--grids", type=int, default=None, help="nodules drawn as PNG grids")
    add_method_arg(p, "follow-ups to draw (RUN/samples, RUN/samples_<method>)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing samples")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sample while holding the samples folder's lock; report where the files are."""
    from namd.run.locking import stage_lock

    run_dir = RunDir(args.run)
    with stage_lock(run_dir.stage(methods.get(args.method).samples)):
        out = _sample(args, run_dir)
    print(f"sample: done -> {out}")
    return 0


def _sample(args: argparse.Namespace, run_dir: RunDir) -> Path:
    """Resolve the config (flags override sampling.*) and write the samples folder."""
    from namd.cli.options import resolve_config
    from namd.config import SamplingConfig, validated_update
    from namd.config.diffusion import check_sampling_steps
    from namd.models.device import resolve_device

    config = resolve_config(args, run_dir)
    updates = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    config.sampling = SamplingConfig.model_validate({**config.sampling.model_dump(), **updates})
    check_sampling_steps(config.sampling, config.diffusion.num_train_timesteps)
    device = resolve_device(args.device)
    method = methods.get(args.method)
    if args.steps is not None and method.steps != "sampling.steps":  # its own sampler's steps
        config = validated_update(config, {method.steps: args.steps})
    if args.overwrite or not run_dir.stage(method.samples).exists():
        print(_estimate(config, run_dir, method, str(device)), flush=True)
    return method.sample_function()(config, run_dir, method, overwrite=args.overwrite, device=device)


def _estimate(config, run_dir: RunDir, method, device: str) -> str:
    """The estimated time, memory and disk of sampling the split (namd.inference.estimate),
    from the cohort's pair count and the method's networks, before any of them loads; the
    samples are memory-mapped, so they count on disk, not in memory."""
    from namd.cohort.store import Cohort
    from namd.inference.estimate import Request, estimate, safe_model_cost
    from namd.inference.pipeline import run_files
    from namd.inference.sampler import pairs_to_sample

    s, uses = config.sampling, dict(method.uses)
    nodules = len(pairs_to_sample(Cohort(run_dir.require("cohort", "sample")), s.split))
    cost = (safe_model_cost(run_files(run_dir, uses)) if {"cond", "vae"} <= set(uses)
            else None)
    request = Request(nodules, methods.sampling_of(config, method).k,
                      methods.sampler_steps(config, method), config.data.crop_size,
                      s.guidance_scale != 1.0, s.max_batch, samples_in_memory=False)
    return estimate(request, cost, device, grids=min(s.grids, nodules)).line()
