"""The run directory: one folder per stage, data flowing one way between them.

    RUN/config.yaml     the run's resolved config (written by the first stage)
    RUN/cohort          the cohort (synthetic or prepared)
    RUN/vae, RUN/vae_no_align, RUN/prior, RUN/cond, RUN/evaluator, RUN/samples, RUN/eval, RUN/report
Each stage folder holds its own run_info.json; a stage is finished when that file says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from namd.config import PRESETS, ConfigError, NamdConfig, load_config, save_config
from namd.contract import CONFIG_FILE, RunFileError, read_json, read_yaml
from namd.runinfo import RUN_INFO, write_run_info

STAGES = ("cohort", "vae", "vae_no_align", "prior", "prior_no_align", "cond", "cond_no_align",
          "cond_null", "evaluator", "samples", "samples_no_align", "samples_null", "eval", "report")


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def stage(self, name: str) -> Path:
        """Folder of a stage (not created)."""
        return self.path / name

    def is_done(self, name: str) -> bool:
        """True when the stage recorded its completion in its run_info.json; a run_info.json
        that cannot be read is a RunFileError (never "not done", which would re-run the stage)."""
        info = self.stage(name) / RUN_INFO
        if not info.is_file():
            return False
        return bool(read_json(info, name).get("complete"))

    def mark_done(self, name: str, config: NamdConfig, seed: int | None, **extra: Any) -> None:
        """Write the stage's run_info.json with `complete: true`."""
        out = self.stage(name)
        out.mkdir(parents=True, exist_ok=True)
        write_run_info(out, config, seed, stage=name, complete=True, **extra)

    def require(self, name: str, needed_by: str) -> Path:
        """The stage folder, or a clear error telling which command makes it."""
        path = self.stage(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: `namd {needed_by}` needs the {name} stage of "
                                    f"run {self.path} (run the stages in order, or `namd demo`)")
        return path

    def saved_config(self) -> dict[str, Any] | None:
        """The run's config.yaml as a dict (checked: it parses and validates), or None for a
        run that has none yet; missing once a stage other than the cohort ran, it is an error."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            ran = [s for s in STAGES if s != "cohort" and (self.stage(s) / RUN_INFO).is_file()]
            if ran:
                raise RunFileError(path, f"missing, though stage(s) {', '.join(ran)} ran with it")
            return None
        saved = read_yaml(path)
        try:
            load_config(base=saved)
        except ConfigError as exc:
            raise RunFileError(path, f"not a valid namd config ({exc})") from None
        return saved


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, shared by every command that reads a config."""
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="named preset (default: the run's saved config, else tiny)")
    parser.add_argument("--config", default=None, help="YAML file overlaid on the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value, e.g. --set vae.train.max_steps=50 (repeatable)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the VAE and the U-Net from random weights even where the config "
                             "requires local SD1.5 weights (the paper preset); saved in RUN/config.yaml")


def resolve_config(args: argparse.Namespace, run: RunDir | None = None,
                   check: Callable[[NamdConfig], None] | None = None) -> NamdConfig:
    """Config of a command: the run's saved config (unless --preset is given) <- file <- --set.

    The first command of a run saves it as RUN/config.yaml so later stages agree on it; `check`
    (e.g. the preflight of namd.config.preflight) runs first, so a refused config is never saved.
    """
    saved = run.saved_config() if run is not None and args.preset is None else None
    overrides = [*args.overrides, *(["require_pretrained=false"] if getattr(args, "from_scratch", False) else [])]
    config = load_config(args.preset or "tiny", args.config, overrides, base=saved)
    if check is not None:
        check(config)
    if run is not None and not (run.path / CONFIG_FILE).exists():
        save_config(config, run.path / CONFIG_FILE)
    return config


def variant_dirs(no_align: bool = False, null_context: bool = False) -> dict[str, str]:
    """Stage folder names of one pipeline variant of the comparison table.

    namd:          vae,          prior,          cond,          samples
    no_align:      vae_no_align, prior_no_align, cond_no_align, samples_no_align  (paper's ablation)
    null_context:  vae,          prior,          cond_null,     samples_null      (image-only conditioning)
    """
    if no_align and null_context:
        raise ValueError("choose one ablation: --no-align or --null-context")
    suffix = "_no_align" if no_align else ""
    return {"vae": f"vae{suffix}", "prior": f"prior{suffix}",
            "cond": "cond_null" if null_context else f"cond{suffix}",
            "samples": "samples_null" if null_context else f"samples{suffix}"}
