"""The stage graph of `namd demo`: what each stage needs, order, independence (shown with
events, not timing), failures that stop only their dependants, and resume. Stages here are tiny
Python processes that write a marker when done; no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from namd.cli.commands.demo import demo_methods
from namd.cli.graph import plan, run_graph
from namd.cli.stages import Launched, Step
from namd.run.errors import StageFailed
from namd.run.layout import RunDir

# A fake stage: checks that the markers of its needs exist, optionally waits (with a timeout)
# for another stage's marker, then writes its own marker; exit 3 = failure.
STAGE = """
import sys, time, pathlib
root, name, needs, wait_for, fail, timeout = sys.argv[1:7]
root = pathlib.Path(root)
for n in filter(None, needs.split(",")):
    assert (root / n).is_file(), f"{name} started before {n} finished"
if wait_for:
    deadline = time.time() + float(timeout)
    while not (root / ("started-" + wait_for)).is_file():
        if time.time() > deadline:
            print(f"{name}: timed out waiting for {wait_for}"); sys.exit(3)
        time.sleep(0.05)
(root / ("started-" + name)).write_text("")
if fail == "1":
    print(f"{name}: broken input (one-line error)"); sys.exit(3)
(root / name).write_text("done")
"""


class Fake:
    """Launcher and bookkeeping of fake stages in `root`."""

    def __init__(self, root: Path, wait: dict[str, str] | None = None, fail: set[str] | None = None,
                 timeout_s: float = 30.0):
        self.root, self.wait, self.fail, self.timeout_s = root, wait or {}, fail or set(), timeout_s
        self.launched: list[tuple[str, int]] = []

    def is_done(self, name: str) -> bool:
        return (self.root / name).is_file()

    def launch(self, step: Step, threads: int) -> Launched:
        self.launched.append((step.folder, threads))
        log = self.root / f"{step.folder}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-c", STAGE, str(self.root), step.folder,
                                     ",".join(step.needs), self.wait.get(step.folder, ""),
                                     "1" if step.folder in self.fail else "0", str(self.timeout_s)],
                                    stdout=fh, stderr=subprocess.STDOUT)
        return Launched(proc, log, time.perf_counter())


GRAPH = [Step("a", ("a",)), Step("b", ("b",), ("a",)), Step("c", ("c",), ("a",)),
         Step("d", ("d",), ("b", "c")), Step("e", ("e",))]


def test_every_stage_runs_after_what_it_needs(tmp_path):
    fake = Fake(tmp_path)
    timings = run_graph(GRAPH, fake.is_done, fake.launch, jobs=2, cores=2, poll_s=0.01)
    assert set(timings) == {"a", "b", "c", "d", "e"} and all(fake.is_done(s) for s in timings)
    order = [name for name, _ in fake.launched]
    assert order.index("a") < order.index("b") < order.index("d") and order.index("c") < order.index("d")
    assert {t for _, t in fake.launched} == {1}  # cores // jobs, whatever runs at the time


def test_independent_stages_run_at_the_same_time(tmp_path):
    """b waits for c to have started: only possible if the two run concurrently."""
    fake = Fake(tmp_path, wait={"b": "c"})
    run_graph(GRAPH, fake.is_done, fake.launch, jobs=2, cores=2, poll_s=0.01)
    assert fake.is_done("b") and fake.is_done("d")
    threads = dict(fake.launched)
    assert threads["b"] == threads["c"] == 1  # two running stages share the two cores


def test_threads_follow_jobs_not_timing(tmp_path):
    """A stage that happens to run alone (a, d, e here: e could run beside any of them) gets
    cores // jobs threads too, so its numbers do not depend on what else happened to be
    running."""
    fake = Fake(tmp_path)
    run_graph(GRAPH, fake.is_done, fake.launch, jobs=2, cores=4, poll_s=0.01)
    assert dict(fake.launched) == {s.folder: 2 for s in GRAPH}
    solo = Fake(tmp_path / "solo")
    (tmp_path / "solo").mkdir()
    run_graph(GRAPH, solo.is_done, solo.launch, jobs=1, cores=4, poll_s=0.01)
    assert set(dict(solo.launched).values()) == {4}


def test_a_failed_stage_stops_only_its_dependants(tmp_path, capsys):
    fake = Fake(tmp_path, fail={"c"})
    with pytest.raises(StageFailed, match="stage c failed: c: broken input"):
        run_graph(GRAPH, fake.is_done, fake.launch, jobs=2, cores=2, poll_s=0.01)
    assert not fake.is_done("d") and "d" not in dict(fake.launched)
    assert fake.is_done("b") and fake.is_done("e")  # independent of c: they finished
    assert "not run: d" in capsys.readouterr().out


def test_resume_skips_finished_stages(tmp_path):
    first = Fake(tmp_path, fail={"d"})
    with pytest.raises(StageFailed):
        run_graph(GRAPH, first.is_done, first.launch, jobs=2, cores=2, poll_s=0.01)
    again = Fake(tmp_path)  # as after fixing d's input and running `namd demo` again
    timings = run_graph(GRAPH, again.is_done, again.launch, jobs=2, cores=2, poll_s=0.01)
    assert [name for name, _ in again.launched] == ["d"]
    assert timings["a"] == 0.0 and timings["d"] > 0


def test_one_job_runs_one_stage_at_a_time(tmp_path):
    """With jobs = 1 a stage waiting for another's start would never see it: it times out."""
    fake = Fake(tmp_path, wait={"b": "e"}, timeout_s=1.0)
    steps = [Step("a", ("a",)), Step("b", ("b",), ("a",)), Step("e", ("e",), ("b",))]
    with pytest.raises(StageFailed, match="timed out waiting for e"):
        run_graph(steps, fake.is_done, fake.launch, jobs=1, cores=2, poll_s=0.01)


def test_the_demo_plan_is_a_graph_of_what_each_stage_reads(tmp_path):
    steps = {s.folder: s for s in plan(RunDir(tmp_path), demo_methods())}
    assert steps["vae"].needs == ("cohort",) and steps["evaluator"].needs == ("cohort",)
    assert steps["cond_null_context"].needs == ("prior",) and steps["prior_no_align"].needs == ("vae_no_align",)
    assert steps["samples_null_context"].needs == ("cond_null_context",)
    assert set(steps["eval"].needs) == {"evaluator", "samples", "samples_no_align", "samples_null_context"}
    assert steps["report"].needs == ("eval",)
    order = list(steps)
    for s in steps.values():  # the plan's order is a valid sequential order (jobs = 1)
        assert all(order.index(n) < order.index(s.folder) for n in s.needs)
    unknown = [Step("x", ("x",), ("nowhere",))]
    with pytest.raises(RuntimeError, match="not in the plan"):
        run_graph(unknown, lambda _: False, Fake(tmp_path).launch, jobs=2, cores=2)


def test_one_job_keeps_a_failed_stage_error_as_its_cause(tmp_path, capsys):
    """--jobs 1 calls the stage functions, not the CLI: the first stage's damaged config
    surfaces as StageFailed naming the stage and the error, chained to the ConfigError."""
    from namd.cli.graph import run_pipeline
    from namd.config import ConfigError

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("data: [unclosed\n")  # not YAML
    with pytest.raises(StageFailed, match=r"stage cohort failed \(namd synth .*\): ConfigError: ") as info:
        run_pipeline(run, ("namd",), jobs=1)
    assert isinstance(info.value.__cause__, ConfigError)
    assert "not valid YAML" in str(info.value) and "\n" not in str(info.value)
    assert not (run.path / "cohort").exists() or not run.is_done("cohort")


def test_a_stage_nothing_can_run_beside_gets_every_core(tmp_path):
    """In a -> (b, c) -> d, a and d come before or after every other stage: all the cores, by
    the plan's shape, whatever the timing; b and c share them."""
    from namd.cli.graph import solo_stages

    chain = GRAPH[:4]
    assert solo_stages(chain) == {"a", "d"} and solo_stages(GRAPH) == set()
    fake = Fake(tmp_path)
    run_graph(chain, fake.is_done, fake.launch, jobs=2, cores=4, poll_s=0.01)
    assert dict(fake.launched) == {"a": 4, "b": 2, "c": 2, "d": 4}
    demo = plan(RunDir(tmp_path), demo_methods())
    assert solo_stages(demo) == {"cohort", "eval", "report"}


def test_a_compared_method_alone_brings_the_stages_it_reads_from_another_method(tmp_path):
    """SD1.5 reads the no-align VAE, which the ablation's entry trains: `--methods sd15` makes
    that stage too (once, before its reader), and all of the table is one valid graph."""
    steps = plan(RunDir(tmp_path), ["sd15"])
    folders = [s.folder for s in steps]
    assert folders[:3] == ["cohort", "vae_no_align", "cond_sd15"]
    assert "prior_no_align" not in folders and "vae" not in folders
    every = plan(RunDir(tmp_path), ["namd", "no_align", "null_context", "sd15", "flux", "ddlcxr"])
    seen: set[str] = set()
    for step in every:
        assert set(step.needs) <= seen, step.folder
        seen.add(step.folder)
    assert len(seen) == len(every)
