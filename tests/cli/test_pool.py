"""The warm worker pool of `namd demo`: stages run in reused workers with their threads and
their own log, and a failing stage comes back as a failure with its one-line error."""

from __future__ import annotations

import importlib
import time

from namd.cli.graph import last_line
from namd.cli.pool import StagePool, warm_modules
from namd.cli.stages import Step
from namd.run.layout import RunDir


def wait(task, timeout_s: float = 300.0) -> int:
    """The task's exit code once it is done."""
    deadline = time.monotonic() + timeout_s
    while (code := task.poll()) is None:
        assert time.monotonic() < deadline, "stage did not finish"
        time.sleep(0.05)
    return code


def test_every_warm_module_imports_and_the_table_s_stages_are_warm():
    modules = warm_modules()
    for name in modules:
        importlib.import_module(name)
    assert {"namd.training.vae", "namd.training.diffusion", "namd.inference.sample_stage"} <= set(modules)


def test_stages_reuse_one_worker_with_their_threads_and_logs(tmp_path):
    run = RunDir(tmp_path)
    steps = [Step(f"c{i}", ("synth", "--out", str(tmp_path / f"c{i}"), "--pairs", "3", "--unpaired", "1"))
             for i in range(2)]
    with StagePool(1) as pool:
        first = pool.launch(run, steps[0], threads=1)
        assert wait(first.process) == 0
        second = pool.launch(run, steps[1], threads=2)
        assert wait(second.process) == 0
    heads = [item.log_path.read_text().splitlines()[0] for item in (first, second)]
    assert heads[0].split("worker ")[1].split(",")[0] == heads[1].split("worker ")[1].split(",")[0]
    assert heads[0].endswith("1 thread(s)") and heads[1].endswith("2 thread(s)")
    assert first.log_path == tmp_path / "logs" / "c0.log"
    assert (tmp_path / "c1" / "manifest.csv").is_file()


def test_a_failing_stage_reports_its_one_line_error(tmp_path):
    run = RunDir(tmp_path)
    step = Step("vae", ("train", "vae", "--run", str(tmp_path / "nowhere")))
    with StagePool(1) as pool:
        item = pool.launch(run, step, threads=1)
        assert wait(item.process) == 1
        again = pool.launch(run, Step("c", ("synth", "--out", str(tmp_path / "c"), "--pairs", "2",
                                            "--unpaired", "0")), threads=1)
        assert wait(again.process) == 0  # the worker survives a failed stage
    line = last_line(item.log_path)
    assert line.startswith("error: stage vae failed (namd train vae") and "cohort" in line


def test_a_stage_in_a_used_worker_equals_a_fresh_process(tmp_path):
    """A worker that already ran a stage trains the next one to the same weights, bit for bit,
    as a fresh `namd` process with the same threads: nothing leaks from stage to stage."""
    import os
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    from namd.config import load_config, save_config

    config = load_config("tiny", overrides=["synth.pairs=24", "synth.unpaired=8", "vae.train.max_steps=3",
                                            "vae.train.val_every=2", "vae.report_tsne_max=20"])
    runs = [tmp_path / "pool", tmp_path / "fresh"]
    for run in runs:
        run.mkdir()
        save_config(config, run / "config.yaml")
    with StagePool(1) as pool:
        cohort = pool.launch(RunDir(runs[0]), Step("cohort", ("synth", "--out", str(runs[0] / "cohort"),
                                                              "--config", str(runs[0] / "config.yaml"))), 1)
        assert wait(cohort.process) == 0
        shutil.copytree(runs[0] / "cohort", runs[1] / "cohort")
        vae = pool.launch(RunDir(runs[0]), Step("vae", ("train", "vae", "--run", str(runs[0]))), 1)
        assert wait(vae.process) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "namd.cli", "train", "vae", "--run", str(runs[1])], env=env,
                   check=True, capture_output=True)
    weights = [load_file(run / "vae" / "autoencoder" / "diffusion_pytorch_model.safetensors") for run in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


def test_a_worker_that_cannot_start_fails_its_stage_with_a_line(tmp_path):
    """A pool whose workers die at start (here: a module to preload that does not exist) fails
    the stage with a readable line in its log, not a silent exit code."""
    run = RunDir(tmp_path)
    with StagePool(1, modules=("namd.no_such_module",)) as pool:
        item = pool.launch(run, Step("c", ("synth", "--out", str(tmp_path / "c"))), threads=1)
        assert wait(item.process) == 1
    assert last_line(item.log_path).startswith("error: stage did not run: ")


def test_stopping_two_running_stages_stops_every_worker(tmp_path):
    """An interrupted walk terminates each running stage's handle: the first call stops the
    pool's workers, the second finds nothing left, and the pool closes without hanging."""
    run = RunDir(tmp_path)
    long = [Step(f"c{i}", ("synth", "--out", str(tmp_path / f"c{i}"), "--pairs", "100000")) for i in range(2)]
    with StagePool(2) as pool:
        items = [pool.launch(run, step, threads=1) for step in long]
        deadline = time.monotonic() + 120
        while not all(i.log_path.is_file() and "worker" in i.log_path.read_text() for i in items):
            assert time.monotonic() < deadline, "stages did not start"
            time.sleep(0.1)
        pids = list(pool.executor._processes)
        for item in items:
            item.process.terminate()
    # the pool's own thread may reap a worker first (then Process.is_alive misreports it), so
    # ask the kernel whether the pids still exist
    assert not any(_exists(pid) for pid in pids)
    assert not any((tmp_path / f"c{i}" / "manifest.csv").is_file() for i in range(2))


def _exists(pid: int, wait_s: float = 10.0) -> bool:
    """Whether process `pid` is still there after up to `wait_s` (a zombie counts as gone)."""
    import os

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.1)
    return os.path.exists(f"/proc/{pid}")
