"""The whole method as a sequence of the CLI's own stage commands over one run directory.

`namd demo` is only this: each stage reads what the previous one wrote, a finished stage
(its run_info.json says complete) is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from namd.rundir import RunDir, variant_dirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One stage: the folder that proves it is done, and the `namd` arguments that make it."""

    folder: str
    argv: tuple[str, ...]


def _flags(variant: dict[str, bool]) -> tuple[str, ...]:
    """The command-line flag that selects a pipeline variant (none for NAMD itself)."""
    if variant["no_align"]:
        return ("--no-align",)
    return ("--null-context",) if variant["null_context"] else ()


def plan(run: RunDir, ablations: bool) -> list[Step]:
    """The ordered stages of a run; ablations add the no-align and null-context variants.

    Every stage reads the run's saved RUN/config.yaml, so they all agree on one config.
    """
    r = str(run.path)
    steps = [Step("cohort", ("synth", "--out", f"{r}/cohort", "--config", f"{r}/config.yaml"))]
    variants = [{"no_align": False, "null_context": False}]
    if ablations:
        variants += [{"no_align": True, "null_context": False}, {"no_align": False, "null_context": True}]
    done_folders: set[str] = {"cohort"}
    for v in variants:
        dirs, flag = variant_dirs(**v), _flags(v)
        vae_flag = ("--no-align",) if v["no_align"] else ()
        for stage, folder, extra in (("vae", dirs["vae"], vae_flag), ("prior", dirs["prior"], vae_flag),
                                     ("cond", dirs["cond"], flag)):
            if folder not in done_folders:
                steps.append(Step(folder, ("train", stage, "--run", r, "--resume", *extra)))
                done_folders.add(folder)
    steps.append(Step("evaluator", ("train", "evaluator", "--run", r, "--resume")))
    for v in variants:
        steps.append(Step(variant_dirs(**v)["samples"], ("sample", "--run", r, "--split", "test", *_flags(v))))
    steps.append(Step("eval", ("evaluate", "--run", r)))
    steps.append(Step("report", ("report", "--run", r)))
    return steps


def run_pipeline(run: RunDir, ablations: bool) -> dict[str, float]:
    """Run every unfinished stage in order; returns seconds spent per stage (0 = skipped)."""
    from namd.cli import main

    timings: dict[str, float] = {}
    for step in plan(run, ablations):
        if run.is_done(step.folder):
            log.info("%s: already finished, skipped", step.folder)
            timings[step.folder] = 0.0
            continue
        print(f"\n== namd {' '.join(step.argv)}", flush=True)
        start = time.perf_counter()
        code = main(list(step.argv))
        if code != 0:
            raise RuntimeError(f"stage {step.folder} failed (namd {' '.join(step.argv)} exited {code})")
        timings[step.folder] = time.perf_counter() - start
    return timings
