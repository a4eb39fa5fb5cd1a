"""Atomic writes, run provenance and progress bars."""

from __future__ import annotations

import json
import os

import pytest

from namd.config import load_config
from namd.run.provenance import (
    RUN_INFO,
    PathPolicy,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    progress,
    recorded_paths,
    write_run_info,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # no temp file left


def test_failed_write_keeps_old_content(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_crash_while_publishing_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import os

    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_json_handles_numpy_scalars_and_tuples(tmp_path):
    import numpy as np

    atomic_write_json(tmp_path / "x.json", {"n": np.int64(3), "f": np.float32(0.5), "t": (1, 2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"n": 3, "f": 0.5, "t": [1, 2]}


def test_json_handles_numpy_arrays(tmp_path):
    import numpy as np

    atomic_write_json(tmp_path / "x.json", {"v": np.arange(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": [0, 1]}


def test_published_files_and_folders_are_readable_by_others(tmp_path):
    atomic_write_json(tmp_path / "x.json", {})
    with atomic_dir(tmp_path / "d"):
        pass
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_atomic_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            assert not final.exists()
            raise ValueError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"


def test_atomic_dir_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_dir(final):
            pass
    with pytest.raises(KeyError):  # a failed overwrite keeps the old folder
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyError("crash")
    assert (final / "old.txt").exists()
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_run_info(tmp_path):
    cfg = load_config("tiny", overrides=["synth.seed=5"])
    info = write_run_info(tmp_path, cfg, 5, stage="synth", complete=True)
    saved = json.loads((tmp_path / RUN_INFO).read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["seed"] == 5 and saved["stage"] == "synth" and saved["complete"] is True
    assert saved["config"]["synth"]["seed"] == 5
    assert {"python", "numpy", "torch", "namd"} <= set(saved["versions"])
    assert saved["time_utc"].endswith("Z") and saved["command"]


def _argv(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "cohort.csv").write_text("x")
    return ["/usr/bin/namd", "prepare", "manifest", str(tmp_path / "tables" / "cohort.csv"),
            "--images=/data/TCIA/LIDC-IDRI-0042/01-02-2000-CT", "--out", str(tmp_path / "out"),
            "--set", "data.crop_size=32", "--steps", "-3", "--on-error", "skip", "--label", "Q7xZ"]


def test_command_paths_are_relative_to_the_stated_root(tmp_path):
    command = PathPolicy(tmp_path).command(_argv(tmp_path))
    assert command == ("namd prepare manifest tables/cohort.csv --images=../" + "../" * (len(tmp_path.parts) - 2)
                       + "data/TCIA/LIDC-IDRI-0042/01-02-2000-CT --out out --set data.crop_size=32 "
                       "--steps -3 --on-error skip --label Q7xZ")


def test_hashed_command_keeps_no_path_or_id(tmp_path):
    command = PathPolicy(tmp_path, hasher=lambda v: "h" * 16).command(_argv(tmp_path))
    for raw in ("cohort.csv", "TCIA", "LIDC-IDRI-0042", "01-02-2000", str(tmp_path), "Q7xZ"):
        assert raw not in command
    assert command == ("namd prepare manifest hash:hhhhhhhhhhhhhhhh --images=hash:hhhhhhhhhhhhhhhh "
                       "--out hash:hhhhhhhhhhhhhhhh --set data.crop_size=32 --steps -3 "
                       "--on-error skip --label hash:hhhhhhhhhhhhhhhh")


def test_run_info_never_stores_the_raw_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", _argv(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny")
    info = write_run_info(tmp_path, cfg, 1)
    assert info["paths"] == {"hashed": False, "relative_to": str(tmp_path)}
    assert " tables/cohort.csv " in info["command"] and "--images=/data" not in info["command"]
    with recorded_paths(hasher=lambda v: "0" * 16):
        write_run_info(tmp_path, cfg, 1)
    text = (tmp_path / RUN_INFO).read_text()
    assert "LIDC-IDRI-0042" not in text and "cohort.csv" not in text and str(tmp_path) not in text
    assert json.loads(text)["paths"]["hashed"] is True
    assert write_run_info(tmp_path, cfg, 1)["paths"]["hashed"] is False  # only inside the block


def test_package_versions_report_missing_packages():
    versions = package_versions()
    assert versions["numpy"][0].isdigit()


def test_progress_bar_counts_and_can_be_silenced(monkeypatch, capsys):
    monkeypatch.setenv("NAMD_NO_PROGRESS", "1")
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("NAMD_NO_PROGRESS")
    with progress(total=4, desc="work", unit="crop") as bar:
        bar.update(4)
    err = capsys.readouterr().err
    assert "work" in err and "4/4" in err and "crop" in err


def test_a_command_run_in_process_records_itself_not_its_caller(tmp_path, monkeypatch):
    """`namd.cli.main.main([...])` (as `namd demo --jobs 1` runs its stages) records that command,
    not the caller's sys.argv."""
    import json

    from namd.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest", "--caller-flag"])
    assert main(["synth", "--out", "cohort", "--pairs", "12", "--unpaired", "4",
                 "--set", "synth.split_fractions=[0.5,0.25,0.25]"]) == 0
    command = json.loads((tmp_path / "cohort" / "run_info.json").read_text())["command"]
    assert command.startswith("namd synth --out cohort") and "caller-flag" not in command
