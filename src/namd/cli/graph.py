"""The whole method as a graph of the CLI's own stage commands over one run directory.

`namd demo` is only this: each stage reads what the stages it needs wrote, a finished stage
(its run_info.json says complete) is skipped, so an interrupted run resumes where it stopped.
The stages form a graph (each method's chain and the evaluator do not depend on each other): with `jobs` > 1, ready stages run at the same time in `jobs` worker
processes (namd.cli.pool), each stage with cores / jobs threads (all the cores for a stage
that nothing can run beside) and its output in RUN/logs/<stage>.log; `jobs` = 1 runs them one
after the other in this process, in plan order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from namd.cli.main import build_parser
from namd.cli.stages import Launched, Step, run_step
from namd.config import methods
from namd.run.errors import StageFailed
from namd.run.layout import RunDir

log = logging.getLogger(__name__)


def plan(run: RunDir, names: Sequence[str]) -> list[Step]:
    """The stages of a run in a valid sequential order, each with what it needs: the cohort,
    the stages each method in `names` trains (namd.config.methods; a stage two methods share is
    made once), each method's samples, the evaluator, the evaluation and the report.

    Every stage reads the run's saved RUN/config.yaml, so they all agree on one config.
    """
    r, chosen = str(run.path), [methods.get(n) for n in names]
    steps = [Step("cohort", ("synth", "--out", f"{r}/cohort", "--config", f"{r}/config.yaml"))]
    made: set[str] = {"cohort"}

    def add(folder: str) -> None:
        """The stage that writes `folder`, after the stages it needs (another method's too:
        SD1.5's row reads the no-align VAE)."""
        found = methods.owner(folder)
        if folder in made or found is None or found[1] is None:
            return
        owner, stage = found
        for need in stage.needs:
            add(need)
        steps.append(Step(folder, ("train", stage.kind, "--run", r, "--resume", *owner.argv),
                          stage.needs))
        made.add(folder)

    for m in chosen:
        for s in m.trains:
            add(s.folder)
        for need in m.sample_needs:
            add(need)
    for m in chosen:
        steps.append(Step(m.samples, ("sample", "--run", r, "--split", "test", *m.argv),
                          m.sample_needs))
    # the judge needs only the cohort: with `jobs` > 1 ready stages start in plan order, so
    # placing it last lets the long sample stages start first and it fills the gap they leave
    # (on the demo: every worker busy to the end instead of one idle for three minutes)
    steps.append(Step("evaluator", ("train", "evaluator", "--run", r, "--resume"), ("cohort",)))
    steps.append(Step("eval", ("evaluate", "--run", r), ("evaluator", *(m.samples for m in chosen))))
    steps.append(Step("report", ("report", "--run", r), ("eval",)))
    return steps


def run_pipeline(run: RunDir, names: Sequence[str], jobs: int = 1) -> dict[str, float]:
    """Run every unfinished stage of the methods `names`; returns seconds spent per stage
    (0 = skipped)."""
    steps = plan(run, names)
    if jobs <= 1:
        return _run_in_process(run, steps)
    from namd.cli.pool import StagePool

    cores = os.cpu_count() or 1
    with StagePool(jobs, threads=max(1, cores // jobs)) as pool:
        return run_graph(steps, run.is_done, lambda step, threads: pool.launch(run, step, threads),
                         jobs, cores)


def _run_in_process(run: RunDir, steps: list[Step]) -> dict[str, float]:
    """One stage after the other in this process, each through its own command function."""
    parser = build_parser()
    timings: dict[str, float] = {}
    for step in steps:
        if run.is_done(step.folder):
            log.info("%s: already finished, skipped", step.folder)
            timings[step.folder] = 0.0
            continue
        print(f"\n== namd {' '.join(step.argv)}", flush=True)
        start = time.perf_counter()
        run_step(parser, step)
        timings[step.folder] = time.perf_counter() - start
    return timings


def last_line(path: Path) -> str:
    """The last non-empty line or progress-bar frame of a log (its one-line error, when failed)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    frames = [f.strip() for f in tail.replace("\r", "\n").split("\n") if f.strip()]
    return frames[-1] if frames else ""


def _closure(steps: list[Step], start: str, forward: bool) -> set[str]:
    """The stages `start` needs, directly or through others (forward=False), or those that
    need it (forward=True)."""
    edges: dict[str, set[str]] = {s.folder: set() for s in steps}
    for s in steps:
        for n in s.needs:
            if forward:
                edges.setdefault(n, set()).add(s.folder)
            else:
                edges[s.folder].add(n)
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def solo_stages(steps: list[Step]) -> set[str]:
    """Stages that no other stage can run beside: every other stage comes before or after them
    (the demo's cohort, eval and report). Decided by the plan alone, so giving them all the
    cores keeps a run's numbers independent of timing."""
    names = {s.folder for s in steps}
    return {s.folder for s in steps
            if _closure(steps, s.folder, False) | _closure(steps, s.folder, True) | {s.folder} == names}


def _blocked(steps: list[Step], failed: set[str]) -> set[str]:
    """Every stage that needs, directly or through others, a failed stage."""
    return set().union(*(_closure(steps, name, True) for name in failed))


def run_graph(steps: list[Step], is_done: Callable[[str], bool],
              launch: Callable[[Step, int], Launched], jobs: int, cores: int,
              poll_s: float = 0.2, status_every_s: float = 30.0) -> dict[str, float]:
    """Walk the stage graph: start every stage whose needs are done, at most `jobs` at a time,
    each with max(1, cores // jobs) threads, or all `cores` for a stage that no other stage of
    the plan can run beside (`solo_stages`); a failed stage stops its dependants and the others
    finish. Raises StageFailed naming every failed stage and its last log line.

    The thread count is fixed by `jobs` and the plan's shape, not by how many stages happen to
    be running when a stage starts: a stage's floating-point results depend on its thread
    count, so a run gives the same numbers whatever the timing of its stages (the same `jobs`,
    the same results)."""
    solo = solo_stages(steps)
    timings = {s.folder: 0.0 for s in steps if is_done(s.folder)}
    pending = [s for s in steps if s.folder not in timings]
    running: dict[str, Launched] = {}
    failed: dict[str, str] = {}
    last_status = time.perf_counter()
    try:
        while pending or running:
            for name, item in list(running.items()):
                code = item.process.poll()
                if code is None:
                    continue
                del running[name]
                timings[name] = time.perf_counter() - item.started
                if code == 0 and is_done(name):
                    print(f"done: {name} in {timings[name]:.0f} s", flush=True)
                else:
                    failed[name] = last_line(item.log_path) or f"exited {code}"
                    print(f"failed: {name}: {failed[name]} (log: {item.log_path})", flush=True)
            blocked = _blocked(steps, set(failed))
            for s in [s for s in pending if s.folder in blocked]:
                pending.remove(s)
                print(f"not run: {s.folder} (needs a failed stage)", flush=True)
            ready = [s for s in pending if all(n in timings and n not in failed for n in s.needs)]
            if not ready and not running and pending:
                raise RuntimeError("stages " + ", ".join(s.folder for s in pending) +
                                   " need stages that are not in the plan")
            ready = ready[:max(0, jobs - len(running))]
            for s in ready:
                pending.remove(s)
                threads = cores if s.folder in solo else max(1, cores // jobs)
                running[s.folder] = launch(s, threads)
                print(f"start: namd {' '.join(s.argv)} ({threads} thread(s))", flush=True)
            if running and time.perf_counter() - last_status > status_every_s:
                last_status = time.perf_counter()
                for name, item in running.items():
                    print(f"  {name} [{time.perf_counter() - item.started:.0f} s] "
                          f"{last_line(item.log_path)[:100]}", flush=True)
            if running:
                time.sleep(poll_s)
    finally:
        for item in running.values():  # interrupted: stop the children, resume later
            item.process.terminate()
    if failed:
        raise StageFailed("; ".join(f"stage {k} failed: {v}" for k, v in failed.items()))
    return timings
