"""The warm worker pool of `namd demo`: stages run in reused workers with their threads and
their own log, and a failing stage comes back as a failure with its one-line error."""

from __future__ import annotations

import importlib
import time

from namd.pipeline import Step, last_line
from namd.rundir import RunDir
from namd.stage_pool import WARM_MODULES, StagePool


def wait(task, timeout_s: float = 300.0) -> int:
    """The task's exit code once it is done."""
    deadline = time.monotonic() + timeout_s
    while (code := task.poll()) is None:
        assert time.monotonic() < deadline, "stage did not finish"
        time.sleep(0.05)
    return code


def test_every_warm_module_imports():
    for name in WARM_MODULES:
        importlib.import_module(name)


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
