"""Worker processes that run `namd demo`'s stages: each imports the stages once, then runs stage
after stage, so a stage costs its own work and not a fresh interpreter's imports (torch,
diffusers and transformers: `time python -c "import namd.training.diffusion, namd.training.vae,
namd.models.text"` took 6.9 s on the 2-core box; 14 stages in a demo with its ablations).

The pool is the standard library's ProcessPoolExecutor (spawned workers: forking a process whose
torch threads already run is unsafe). A task sets the stage's torch threads, sends the worker's
stdout and stderr (progress bars, logging) to the stage's log file, and calls the stage's own
command function through `namd.cli.stages.run_step`, as `--jobs 1` does in the main process; its
one-line error (StageFailed) travels back with the task and ends the log.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

from namd.cli.stages import Launched, Step, log_path
from namd.config import methods
from namd.run.layout import RunDir

BASE_MODULES = ("torch", "diffusers", "transformers", "namd.cohort.synthetic",
                "namd.training.evaluator", "namd.evaluation.evaluate", "namd.evaluation.report.build")


def warm_modules() -> tuple[str, ...]:
    """The modules of every stage command, imported once per worker (their run functions import
    them): the run's own stages and each method's stages and sample function (namd.config.methods)."""
    table = methods.METHODS.values()
    stages = [s.module for m in table for s in m.trains]
    samplers = [m.sample_module for m in table if m.sample_module]
    return tuple(dict.fromkeys((*BASE_MODULES, *stages, *samplers)))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _warm(threads: int, modules: tuple[str, ...]) -> None:
    """Worker initializer: OpenMP's and MKL's thread counts before torch loads (as the
    launcher of one process per stage set them), the logging format of `namd.cli.main.main`, then
    the stages' imports. A stage that gets every core raises the count with
    torch.set_num_threads; on the 2-core box that ran a VAE step as fast as a process started
    with two threads (0.28 against 0.30 s)."""
    import importlib

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in modules:
        importlib.import_module(name)


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Within the block, this process's stdout and stderr (file descriptors 1 and 2, so
    progress bars and logging too) write to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("w") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_logged(step: Step, threads: int, log: str) -> None:
    """One stage in this worker with `threads` torch threads, its output in `log`; a failure is
    re-raised as StageFailed after its one line ends the log."""
    import torch

    from namd.cli.main import build_parser
    from namd.cli.stages import run_step
    from namd.run.errors import StageFailed, one_line

    torch.set_num_threads(threads)
    with _output_to(Path(log)):
        print(f"namd {' '.join(step.argv)}: worker {os.getpid()}, {torch.get_num_threads()} "
              f"thread(s)", flush=True)
        try:
            run_step(build_parser(), step)
        except StageFailed as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise
        except BaseException as exc:  # SystemExit from argparse, a library's own error type
            line = f"stage {step.folder}: {type(exc).__name__}: {one_line(exc)}"
            print(f"error: {line}", file=sys.stderr, flush=True)
            raise StageFailed(line) from None


class Task:
    """A submitted stage as the graph walk sees a process: poll() is None while it runs, then 0
    or 1; terminate() stops the whole pool (stages resume on the next run)."""

    def __init__(self, future: Future, pool: StagePool, log: Path):
        self.future, self.pool, self.log = future, pool, log

    def poll(self) -> int | None:
        """None while running; 0 when done; 1 when failed, the error ending the stage's log even
        when the stage never started (a worker that could not start or died writes nothing)."""
        if not self.future.done():
            return None
        exc = self.future.exception()
        if exc is None:
            return 0
        if not self.log.is_file() or not self.log.read_text(errors="replace").strip():
            self.log.write_text(f"error: stage did not run: {type(exc).__name__}: {exc}\n")
        return 1

    def terminate(self) -> None:
        self.pool.kill()


class StagePool:
    """`jobs` warm worker processes for the stages of one run (a context manager), started
    with `threads` OpenMP threads each (what most of their stages use) and `modules` imported."""

    def __init__(self, jobs: int, threads: int = 1, modules: tuple[str, ...] | None = None):
        self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                            initializer=_warm, initargs=(threads, modules or warm_modules()))

    def launch(self, run: RunDir, step: Step, threads: int) -> Launched:
        """Start `step` on a free worker (or queue it until one is free)."""
        path = log_path(run, step)
        future = self.executor.submit(run_logged, step, threads, str(path))
        return Launched(Task(future, self, path), path, time.perf_counter())

    def kill(self) -> None:
        """Stop every worker now (an interrupted or failed walk); what finished stays done.
        Called once per running stage by the walk: the second call finds nothing left to stop."""
        # no public API in 3.11; shutdown sets _processes to None
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)

    def __enter__(self) -> StagePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True)
