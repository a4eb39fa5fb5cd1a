"""`namd check [--preset P] [--config F] [--set K=V] [--batch-size [STAGE=]N]`: parameters,
trainable parameters and the memory of one training step of every stage (weights, gradients,
AdamW states, activations at the batch size) against a GPU of --gpu-gb GB.

Nothing is trained and no weights are read or allocated: the networks are built on PyTorch's
meta device (namd.sizing, whose docstring says how each term is counted). A language model
given as a local folder is sized from its config and tokenizer; MedGemma's hub name without a
local folder is sized from its published config.
"""

from __future__ import annotations

import argparse

from namd.cli.options import add_config_args

STAGE_NAMES = ("vae", "prior", "cond", "evaluator")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd check`."""
    parser = sub.add_parser("check", help="sizes and GPU memory of each training stage (meta device)",
                            description=__doc__)
    add_config_args(parser)
    parser.add_argument("--batch-size", action="append", default=[], metavar="[STAGE=]N",
                        help="batch size of every stage, or of one (e.g. cond=16); repeatable")
    parser.add_argument("--gpu-gb", type=float, default=48.0, help="GPU memory in GB (default 48, an A40/L40)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="where the step runs: AdamW's temporaries differ (default cuda)")
    parser.set_defaults(func=run)


def batch_sizes(items: list[str]) -> dict[str, int]:
    """'16' -> every stage 16; 'cond=8' -> cond only (later items win)."""
    out: dict[str, int] = {}
    for item in items:
        stage, sep, value = item.rpartition("=")
        if sep and stage not in STAGE_NAMES:
            raise ValueError(f"--batch-size {item}: unknown stage {stage!r}; choose one of {', '.join(STAGE_NAMES)}")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--batch-size {item}: the batch size must be a positive integer")
        out.update({s: int(value) for s in ([stage] if sep else STAGE_NAMES)})
    return out


def run(args: argparse.Namespace) -> int:
    """Resolve the config, size every stage on meta and print the table."""
    from namd.cli.options import resolve_config
    from namd.sizing import estimate_stages, format_table

    config = resolve_config(args)
    rows = estimate_stages(config, batch_sizes(args.batch_size), device=args.device)
    print(format_table(rows, args.gpu_gb, title=f"namd check: preset {config.preset}, one AdamW "
                                                f"training step per stage on {args.device}"))
    return 0
