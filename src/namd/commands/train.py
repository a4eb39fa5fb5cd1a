"""`namd train {vae,prior,cond,evaluator} --run RUN`: train one stage of the pipeline.

Each stage reads what the stage before it wrote in the run directory and writes its own folder
(RUN/vae or RUN/vae_no_align, RUN/prior, RUN/cond, RUN/evaluator), holding its lock
(`namd.locking`) meanwhile, so a second command on the same stage is refused. The same command
runs on several GPUs with `accelerate launch -m namd.cli train ...`; then only rank 0 locks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from pathlib import Path

from namd.config import NamdConfig
from namd.rundir import RunDir, add_config_args, variant_dirs

# stage -> (module implementing `run_stage(config, run, **flags) -> Path`, help)
STAGES = {
    "vae": ("namd.training.vae", "the nodule-aligned VAE (paper 3.2); --no-align for the ablation"),
    "prior": ("namd.training.diffusion", "the unconditional U-Net prior (Equation 9)"),
    "cond": ("namd.training.diffusion", "the conditional U-Net with LLM context (Equation 10)"),
    "evaluator": ("namd.training.evaluator", "the ViT malignancy classifier on real crops"),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd train STAGE`."""
    parser = sub.add_parser("train", help="train one stage", description=__doc__)
    inner = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, text) in STAGES.items():
        p = inner.add_parser(name, help=text, description=text)
        p.add_argument("--run", required=True, help="run directory (holds RUN/cohort)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted training")
        p.add_argument("--overwrite", action="store_true", help="retrain a finished stage")
        if name != "evaluator":
            p.add_argument("--no-align", action="store_true",
                           help="use/train the ablation VAE without L_align and L_pred (RUN/vae_no_align)")
        if name == "cond":
            p.add_argument("--null-context", action="store_true",
                           help="ablation: image-only conditioning (null context), in RUN/cond_null")
        add_config_args(p)
        p.set_defaults(func=run)


def stage_folder(args: argparse.Namespace) -> str:
    """The folder name the flags select, e.g. vae_no_align or cond_null."""
    if args.stage == "evaluator":
        return "evaluator"
    null_context = args.stage == "cond" and bool(getattr(args, "null_context", False))
    return variant_dirs(bool(getattr(args, "no_align", False)), null_context)[args.stage]


def launch_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def stage_flags(args: argparse.Namespace) -> dict[str, object]:
    """The typed keyword arguments of the stage's `run_stage`, read from its command line."""
    flags: dict[str, object] = {"resume": bool(args.resume), "overwrite": bool(args.overwrite)}
    if args.stage != "evaluator":
        flags["no_align"] = bool(args.no_align)
    if args.stage in ("prior", "cond"):
        flags.update(stage=args.stage, null_context=bool(getattr(args, "null_context", False)))
    return flags


def run_stage(args: argparse.Namespace, config: NamdConfig, run_dir: RunDir) -> Path:
    """Hand over to the stage's module, with its typed keyword flags."""
    module = importlib.import_module(STAGES[args.stage][0])
    return module.run_stage(config, run_dir, **stage_flags(args))


def run(args: argparse.Namespace) -> int:
    """Lock the stage folder, resolve the config and hand over to the stage's module."""
    from namd.config.preflight import check_stage
    from namd.locking import stage_lock
    from namd.rundir import resolve_config

    run_dir = RunDir(args.run)
    folder = run_dir.stage(stage_folder(args))
    # the ranks of one multi-GPU launch write one folder together: rank 0 holds the lock for all
    lock = stage_lock(folder) if launch_rank() == 0 else contextlib.nullcontext()
    with lock:
        config = resolve_config(args, run_dir, check=lambda c: check_stage(c, args.stage))
        out = run_stage(args, config, run_dir)
    print(f"{args.stage}: done -> {out}")
    return 0
