"""A run agrees with itself: every reader compares the config it is about to use with the
config each stage it reads was trained with, on the fields that stage depends on
(namd.config.methods: Stage.depends), and refuses a difference in one line naming the field,
both values and what to do."""

from __future__ import annotations

import shutil

import pytest
import yaml

from namd.cli.main import main
from namd.config import ConfigError, load_config
from namd.inference.pipeline import NAMDPipeline
from namd.run.layout import RunDir, config_difference


@pytest.fixture
def run(tiny_run, tmp_path) -> RunDir:
    copy = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, copy.path)
    return copy


def _edit(run: RunDir, dotted: str, value) -> None:
    """Change one field of RUN/config.yaml, as a user editing it after training would."""
    path = run.path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path.write_text(yaml.safe_dump(data))


def test_an_edited_hu_window_is_refused_naming_field_values_and_the_stage(run, capsys):
    _edit(run, "data.window_hu", [-1200.0, 300.0])
    with pytest.raises(ConfigError, match=r"data.window_hu is \[-1200.0, 300.0\] here but .*vae "
                                          r"was trained with \[-1000.0, 400.0\].*namd train vae"):
        NAMDPipeline.from_run(run, device="cpu")
    assert main(["sample", "--run", str(run.path), "--k", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.window_hu" in err and "--overwrite" in err
    assert not run.stage("samples").exists()


def test_a_set_on_the_command_line_is_checked_too(run, capsys):
    assert main(["sample", "--run", str(run.path), "--k", "1",
                 "--set", "text.structured.dim=24"]) == 1
    err = capsys.readouterr().err
    assert "text.structured.dim is 24 here but" in err and "cond was trained with" in err
    assert "namd train cond --run" in err


def test_the_judge_is_checked_by_evaluate(run, capsys):
    _edit(run, "evaluator.depth", 3)
    assert main(["evaluate", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert "evaluator.depth is 3 here but" in err and "namd train evaluator" in err


def test_fields_no_trained_stage_depends_on_may_change(run):
    _edit(run, "vae", {**yaml.safe_load((run.path / "config.yaml").read_text())["vae"],
                       "report_grid": 3})
    _edit(run, "eval", {**yaml.safe_load((run.path / "config.yaml").read_text())["eval"],
                        "bootstrap": 17})
    pipe = NAMDPipeline.from_run(run, device="cpu", config=load_config(
        base=yaml.safe_load((run.path / "config.yaml").read_text()), overrides=["sampling.k=3"]))
    assert pipe.config.sampling.k == 3


def test_config_difference_rules():
    now = {"data": {"a": 1, "new": 5}, "vae": {"x": 1, "report": 2}}
    then = {"data": {"a": 1}, "vae": {"x": 1, "report": 9}}
    assert config_difference(now, then, ("data", "vae"), ("vae.report",)) is None  # new: added since
    assert config_difference(now, then, ("vae",)) == ("vae.report", 2, 9)
    assert config_difference({"d": {"w": [1, 2]}}, {"d": {"w": [1, 3]}}, ("d.w",)) == ("d.w", [1, 2], [1, 3])


def test_the_report_redraws_nothing_under_another_config(run, capsys):
    _edit(run, "data.window_hu", [-1200.0, 300.0])
    assert main(["report", "--run", str(run.path)]) == 1
    assert "data.window_hu is [-1200.0, 300.0] here but" in capsys.readouterr().err
    assert not run.stage("report").exists()
