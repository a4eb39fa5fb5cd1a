"""`namd export RUN OUT [--method NAME]`: the model folder of a trained
run, holding only what inference needs (vae/, unet/, scheduler/, context_encoder/, evaluator/,
config.yaml), the sha256 of every file in model_index.json, and a model card (README.md with
the training data, Table 1 and training curves). Load it with
`namd.NAMDPipeline.from_pretrained(OUT)` or `namd predict --model OUT`.
"""

from __future__ import annotations

import argparse

from namd.config import methods


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd export`."""
    p = sub.add_parser("export", help="write a run's model folder (weights, hashes, model card)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run (vae, cond and evaluator stages)")
    p.add_argument("out", help="the model folder to write")
    p.add_argument("--method", choices=methods.exportable(), default=methods.REFERENCE,
                   help="which model of the run (default namd)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the method once (on the CPU) and save it. Of two exports into the same new folder
    exactly one succeeds: the other's final rename is refused (namd.run.provenance.atomic_dir)."""
    from pathlib import Path

    from namd.inference.pipeline import NAMDPipeline

    if Path(args.out).exists() and not args.overwrite:  # before minutes of loading
        raise FileExistsError(f"{args.out} already exists (use --overwrite to replace it)")
    pipe = NAMDPipeline.from_run(args.run, args.method, device="cpu")
    out = pipe.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"export: {args.method} model {pipe.model_hash[:16]} -> {out}")
    return 0
