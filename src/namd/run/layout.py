"""The run directory: one folder per stage, data flowing one way between them.

    RUN/config.yaml     the run's resolved config (written by the first stage)
    RUN/cohort          the cohort (synthetic or prepared)
    RUN/<stage>         each stage a method of the table trains (RUN/vae, RUN/prior, RUN/cond;
                        RUN/vae_no_align, ...: namd.config.methods) and its samples (RUN/samples, ...)
    RUN/evaluator, RUN/eval, RUN/report   the judge, Table 1 and the report
Each stage folder holds its own run_info.json; a stage is finished when that file says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namd.config import ConfigError, NamdConfig, load_config, methods
from namd.run.contract import CONFIG_FILE, RunFileError, command_for
from namd.run.provenance import RUN_INFO, write_run_info
from namd.run.readers import read_json, read_yaml

# folders of older namd versions -> what they are called now (docs/metrics-schema.md)
RENAMED = {"cond_null": "cond_null_context", "samples_null": "samples_null_context"}


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    """Dotted field -> value of a nested config dict, below `prefix`."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def _at(tree: dict[str, Any], dotted: str) -> Any:
    """The value (or sub-dict) at a dotted path of a nested dict; None when absent."""
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def config_difference(now: dict[str, Any], then: dict[str, Any], depends: tuple[str, ...],
                      ignores: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first field under `depends` (but not under `ignores`) whose value differs between
    two config dicts, with both values; None when they agree. A field the older config lacks
    (added to namd since) is not a difference."""
    for prefix in depends:
        a, b = _flatten(_at(now, prefix), prefix), _flatten(_at(then, prefix), prefix)
        for field in sorted(a):
            if any(field == i or field.startswith(f"{i}.") for i in ignores) or field not in b:
                continue
            if a[field] != b[field]:
                return field, a[field], b[field]
    return None


def stages() -> tuple[str, ...]:
    """Every stage folder a run can hold, in the order they are made: the cohort, each method's
    trained stages (namd.config.methods), the evaluator, each method's samples, eval, report."""
    table = methods.METHODS.values()
    return ("cohort", *(s.folder for m in table for s in m.trains), "evaluator",
            *(m.samples for m in table), "eval", "report")


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
        """Write the stage's run_info.json with `complete: true` and, under `weights_sha256`,
        the sha256 of every weight file the stage wrote (its readers check them:
        namd.run.readers.check_recorded_sha256). Hashed here, once, never while training."""
        from namd.run.provenance import WEIGHTS_KEY, weights_sha256
        from namd.run.readers import recorded_weight_files

        out = self.stage(name)
        out.mkdir(parents=True, exist_ok=True)
        weights = weights_sha256(out, recorded_weight_files(name, out))
        if weights:
            extra = {**extra, WEIGHTS_KEY: weights}
        write_run_info(out, config, seed, stage=name, complete=True, **extra)

    def agree(self, config: NamdConfig, name: str) -> None:
        """Refuse, in one line, a config that differs from the one stage `name` was trained
        with in a field its outputs depend on (namd.config.methods: Stage.depends): a run agrees
        with itself, so an edited RUN/config.yaml or a --set never reinterprets trained files."""
        deps = methods.depends_of(name)
        path = self.stage(name) / RUN_INFO
        if deps is None or not path.is_file():
            return
        trained = read_json(path, name).get("config")
        if not isinstance(trained, dict):
            return  # a stage recorded by a namd that kept no config: nothing to compare
        maker = methods.owner(name)
        if maker is not None and maker[1] is not None:
            config = methods.stage_config(config, maker[1])  # as the stage itself trained
        found = config_difference(config.model_dump(mode="json"), trained, *deps)
        if found is not None:
            field, now, then = found
            raise ConfigError(
                f"{field} is {now!r} here but {self.stage(name)} was trained with {then!r} — "
                f"use the value it was trained with (RUN/config.yaml, --set {field}=...), or "
                f"retrain it (`{command_for(self.path, name)} --overwrite`) and the stages after it")

    def require(self, name: str, needed_by: str) -> Path:
        """The stage folder, or a clear error telling which command makes it."""
        path = self.stage(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: `namd {needed_by}` needs the {name} stage of "
                                    f"run {self.path} (run the stages in order, or `namd demo`)")
        return path

    def check_layout(self) -> None:
        """Refuse, in one line, a run whose folders carry the names of an older namd."""
        old = [f"RUN/{a} -> RUN/{b}" for a, b in RENAMED.items() if self.stage(a).is_dir()]
        if old:
            raise RunFileError(self.path, "made by an older namd whose folders had other names",
                               f"rename {', '.join(old)}, then re-run `namd evaluate --run "
                               f"{self.path}` and `namd report --run {self.path}` (or start a new run)")

    def saved_config(self) -> dict[str, Any] | None:
        """The run's config.yaml as a dict (checked: it parses and validates), or None for a
        run that has none yet; missing once a stage other than the cohort ran, it is an error."""
        self.check_layout()
        path = self.path / CONFIG_FILE
        if not path.is_file():
            ran = [s for s in stages() if s != "cohort" and (self.stage(s) / RUN_INFO).is_file()]
            if ran:
                raise RunFileError(path, f"missing, though stage(s) {', '.join(ran)} ran with it")
            return None
        saved = read_yaml(path)
        try:
            load_config(base=saved)
        except ConfigError as exc:
            raise RunFileError(path, f"not a valid namd config ({exc})") from None
        return saved
