"""`namd train KIND --run RUN [--method NAME]`: train one stage of a method of the table
(namd.config.methods: vae, prior, cond for NAMD and its ablations), or the evaluator.

Each stage reads what the stage before it wrote in the run directory and writes its own folder
(RUN/vae, RUN/prior, RUN/cond; RUN/vae_no_align, ... for another method; RUN/evaluator), holding its lock
(`namd.run.locking`) meanwhile, so a second command on the same stage is refused. The same command
runs on several GPUs with `accelerate launch -m namd.cli train ...`; then only rank 0 locks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from pathlib import Path

from namd.cli.options import add_config_args, add_method_arg
from namd.config import NamdConfig, methods
from namd.run.layout import RunDir

EVALUATOR = ("namd.training.evaluator", "the ViT malignancy classifier on real crops")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd train KIND` for every stage kind of the table, and the evaluator."""
    parser = sub.add_parser("train", help="train one stage", description=__doc__)
    inner = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in {**methods.kinds(), "evaluator": EVALUATOR[1]}.items():
        p = inner.add_parser(name, help=text, description=text)
        p.add_argument("--run", required=True, help="run directory (holds RUN/cohort)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted training")
        p.add_argument("--overwrite", action="store_true", help="retrain a finished stage")
        if name != "evaluator":
            add_method_arg(p, f"{name} stage to train")
        add_config_args(p)
        p.set_defaults(func=run)


def stage_of(args: argparse.Namespace) -> tuple[str, str]:
    """(folder, module) of the stage the arguments select, e.g. (vae_no_align, namd.training.vae)."""
    if args.stage == "evaluator":
        return "evaluator", EVALUATOR[0]
    stage = methods.get(args.method).stage(args.stage)
    return stage.folder, stage.module


def launch_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def stage_flags(args: argparse.Namespace) -> dict[str, object]:
    """The typed keyword arguments of the stage's `run_stage`, read from its command line."""
    flags: dict[str, object] = {"resume": bool(args.resume), "overwrite": bool(args.overwrite)}
    if args.stage != "evaluator":
        flags["method"] = args.method
    if args.stage in ("prior", "cond"):
        flags["stage"] = args.stage
    return flags


def run_stage(args: argparse.Namespace, config: NamdConfig, run_dir: RunDir) -> Path:
    """Hand over to the stage's module, with its typed keyword flags."""
    module = importlib.import_module(stage_of(args)[1])
    return module.run_stage(config, run_dir, **stage_flags(args))


def run(args: argparse.Namespace) -> int:
    """Lock the stage folder, resolve the config and hand over to the stage's module."""
    from namd.cli.options import resolve_config
    from namd.config.preflight import check_stage
    from namd.run.locking import stage_lock

    run_dir = RunDir(args.run)
    folder = run_dir.stage(stage_of(args)[0])
    # the ranks of one multi-GPU launch write one folder together: rank 0 holds the lock for all
    lock = stage_lock(folder) if launch_rank() == 0 else contextlib.nullcontext()
    with lock:
        config = resolve_config(args, run_dir, check=lambda c: check_stage(c, args.stage))
        out = run_stage(args, config, run_dir)
    print(f"{args.stage}: done -> {out}")
    return 0
