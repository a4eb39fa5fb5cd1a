"""`namd synth --out DIR --pairs N --unpaired M --seed S`: the embedded synthetic cohort.

Writes, atomically, a cohort directory (docs/cohort-format.md) with contact_sheet.png and
run_info.json (resolved config, seed, versions) inside it, then prints its summary.
"""

from __future__ import annotations

import argparse

from namd.cli.options import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd synth`."""
    parser = sub.add_parser("synth", help="generate the synthetic longitudinal cohort",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="cohort directory to create")
    parser.add_argument("--pairs", type=int, default=None,
                        help="baseline/follow-up pairs (default: synth.pairs of the config)")
    parser.add_argument("--unpaired", type=int, default=None,
                        help="single-time-point crops for the prior (default: synth.unpaired)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: synth.seed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, generate the cohort and its contact sheet, print the summary."""
    from pathlib import Path

    from namd.cli.commands.cohort import format_summary
    from namd.cli.options import resolve_config
    from namd.cohort.store import Cohort
    from namd.cohort.synthetic import build_synthetic_cohort

    config = resolve_config(args)
    updates = {k: v for k, v in (("pairs", args.pairs), ("unpaired", args.unpaired),
                                 ("seed", args.seed)) if v is not None}
    for key, value in updates.items():
        if value < 0:
            raise ValueError(f"--{key} must be >= 0, got {value}")
        setattr(config.synth, key, value)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    build_synthetic_cohort(out, config, overwrite=args.overwrite)
    print(out)
    print(format_summary(Cohort(out).summary()))
    return 0
