"""Options shared by the sub-commands: the config (--preset / --config / --set / --from-scratch,
resolved against the run's saved config) and the method of the table (--method)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from namd.config import PRESETS, NamdConfig, load_config, methods, save_config
from namd.run.contract import CONFIG_FILE
from namd.run.layout import RunDir


def add_method_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """--method NAME: which method of the table (namd.config.methods) `what` belongs to."""
    parser.add_argument("--method", default=methods.REFERENCE, choices=tuple(methods.METHODS),
                        help=f"the method of the table whose {what} (default: {methods.REFERENCE}; "
                             "no_align: the paper's ablation, null_context: image-only conditioning)")


FROM_SCRATCH = ("require_pretrained=false", "vae.pretrained=null", "diffusion.unet.pretrained=null")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, shared by every command that reads a config."""
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="named preset (default: the run's saved config, else tiny)")
    parser.add_argument("--config", default=None, help="YAML file overlaid on the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value, e.g. --set vae.train.max_steps=50 (repeatable)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the VAE and the U-Net from random weights: no SD1.5 weights "
                             "(the paper preset) and no shipped foundation (the CPU presets); saved "
                             "in RUN/config.yaml")


def resolve_config(args: argparse.Namespace, run: RunDir | None = None,
                   check: Callable[[NamdConfig], None] | None = None) -> NamdConfig:
    """Config of a command: the run's saved config (unless --preset is given) <- file <- --set.

    The first command of a run saves it as RUN/config.yaml so later stages agree on it; `check`
    (e.g. the preflight of namd.config.preflight) runs first, so a refused config is never saved.
    """
    saved = run.saved_config() if run is not None and args.preset is None else None
    overrides = [*args.overrides, *(FROM_SCRATCH if getattr(args, "from_scratch", False) else [])]
    config = load_config(args.preset or "tiny", args.config, overrides, base=saved)
    if check is not None:
        check(config)
    if run is not None and not (run.path / CONFIG_FILE).exists():
        save_config(config, run.path / CONFIG_FILE)
    return config
