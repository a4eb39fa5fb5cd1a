"""Are RUN/eval's numbers still those of the run? Nothing is built from stale metrics.

`namd evaluate` records in RUN/eval/run_info.json, under `inputs`, the identity of every stage
it reads (folder -> the `time_utc` of its run_info.json when finished, else null): the cohort,
every method's trained stages (the weights its samples come from), the evaluator and every
method's sample folder. The report and the model card compare that record with each stage's
current run_info.json and refuse, in one line, metrics that describe samples or weights that
have changed since (re-sampled with another K, retrained, removed or made after the
evaluation). An evaluation by a namd that kept no record is compared by time: no stage may
have finished after it.

Light on purpose (json only): the report and the model card import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namd.config import methods
from namd.evaluation.schema import read_metrics
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO
from namd.run.readers import read_json

INPUTS_KEY = "inputs"  # RUN/eval/run_info.json: {stage folder: time_utc of its run_info | null}
METRICS_FILE = "metrics.json"


def read_stages() -> tuple[str, ...]:
    """Every stage folder whose outputs the metrics describe: the cohort, each method's trained
    stages (namd.config.methods), the evaluator and each method's sample folder, each once."""
    table = methods.METHODS.values()
    return tuple(dict.fromkeys(("cohort", *(s.folder for m in table for s in m.trains),
                                "evaluator", *(m.samples for m in table))))


def _finished_info(run: RunDir, folder: str) -> dict[str, Any] | None:
    """A finished stage's run_info.json, None when it is not finished."""
    path = run.stage(folder) / RUN_INFO
    if not path.is_file():
        return None
    info = read_json(path, folder)
    return info if info.get("complete") else None


def stage_time(run: RunDir, folder: str) -> str | None:
    """When a finished stage finished (its run_info's `time_utc`), None when not finished."""
    info = _finished_info(run, folder)
    return None if info is None else str(info.get("time_utc") or "")


def stage_identity(run: RunDir, folder: str) -> str | None:
    """Which run of a stage is in the folder (None when it is not finished): its run_info's
    `time_utc` and, where recorded, its `run_id` (two runs within one second differ too)."""
    info = _finished_info(run, folder)
    if info is None:
        return None
    when = str(info.get("time_utc") or "finished, time not recorded")
    return f"{when} (run {info['run_id'][:12]})" if info.get("run_id") else when


def evaluated_inputs(run: RunDir) -> dict[str, str | None]:
    """The record `namd evaluate` keeps of the stages it reads (INPUTS_KEY)."""
    return {folder: stage_identity(run, folder) for folder in read_stages()}


def _change(now: str | None, then: str | None) -> str:
    """How a stage changed since the evaluation, in words."""
    if then is None:
        return f"finished {now}, after the evaluation found it not finished"
    if now is None:
        return f"no longer finished (the evaluation read its run of {then})"
    return f"made again {now}; the evaluation read its run of {then}"


def stale_input(run: RunDir, eval_info: dict[str, Any]) -> tuple[str, str] | None:
    """The first stage that changed since the evaluation recorded in `eval_info` (its
    run_info.json), and how; None when the metrics are current."""
    recorded = eval_info.get(INPUTS_KEY)
    if isinstance(recorded, dict):
        for folder, then in recorded.items():
            now = stage_identity(run, str(folder))
            if now != (None if then is None else str(then)):
                return str(folder), _change(now, then)
        return None
    evaluated = eval_info.get("time_utc")
    if not isinstance(evaluated, str):
        return None  # nothing to compare with
    for folder in read_stages():
        now = stage_time(run, folder)
        if now and now > evaluated:  # ISO 8601 UTC strings sort by time
            return folder, f"finished {now}, after the evaluation of {evaluated}"
    return None


def check_samples_newer_than_weights(folder: Path, info: dict[str, Any], split: str) -> None:
    """RunFileError when a sample folder (its run_info.json `info`) is older than a model folder
    its method samples with (namd.config.methods: Method.uses), retrained since: its samples
    are not those of the weights now in the run. A folder without a time is not compared."""
    found, made = methods.owner(Path(folder).name), info.get("time_utc")
    if found is None or not isinstance(made, str):
        return
    method, run = found[0], RunDir(Path(folder).parent)
    for used in dict.fromkeys(method.uses.values()):
        now = stage_time(run, used)
        if now and now > made:
            raise RunFileError(Path(folder) / RUN_INFO, f"the samples were made {made}, before "
                               f"{run.stage(used)} was trained again ({now}): they are not "
                               "those of its weights",
                               f"sample again: `namd sample --run {run.path} --split {split}"
                               f"{''.join(f' {a}' for a in method.argv)} --overwrite`")


def check_fresh(run: RunDir) -> None:
    """RunFileError on RUN/eval/metrics.json when a stage it describes changed since
    `namd evaluate` ran; nothing to compare when RUN/eval has no run_info.json."""
    info_path = run.stage("eval") / RUN_INFO
    if not info_path.is_file():
        return
    found = stale_input(run, read_json(info_path, "eval"))
    if found is not None:
        folder, how = found
        raise RunFileError(run.stage("eval") / METRICS_FILE,
                           f"older than {run.stage(folder)} ({how}): its numbers describe "
                           "samples or weights that have changed",
                           f"re-run `namd evaluate --run {run.path}`, then build the report or "
                           "model card again")


def read_current_metrics(run: RunDir, need: tuple[str, ...] = ()) -> dict[str, Any]:
    """RUN/eval/metrics.json, checked for its schema, meaning and the top-level fields `need`
    (read_metrics) and to be newer than every stage it describes (check_fresh)."""
    metrics = read_metrics(Path(run.stage("eval")) / METRICS_FILE, need)
    check_fresh(run)
    return metrics
