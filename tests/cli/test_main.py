"""The `namd` command: discovery, `namd synth`, `namd cohort info`, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

import namd.cli.commands.cohort
from namd.cli.main import build_parser, main
from namd.cohort.store import Cohort
from namd.run.contract import RunFileError
from namd.run.errors import StageFailed


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cohort"
    rc = main(["synth", "--out", str(out), "--pairs", "6", "--unpaired", "3", "--seed", "2",
               "--set", "synth.missing_rate=0.1"])
    assert rc == 0
    return out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "synth" in text and "cohort" in text
    assert main([]) == 2  # no command: help, non-zero


def test_synth_writes_cohort_sheet_and_run_info(synth_dir):
    assert sorted(p.name for p in synth_dir.iterdir()) == [
        "cohort.json", "contact_sheet.png", "images", "known_futures.csv", "known_futures.npy",
        "manifest.csv", "run_info.json"]
    cohort = Cohort(synth_dir)
    assert len(cohort.pairs()) == 6 and (cohort.manifest.kind == "unpaired").sum() == 3
    info = json.loads((synth_dir / "run_info.json").read_text())
    assert info["seed"] == 2 and info["complete"] is True and info["stage"] == "cohort"
    assert info["config"]["synth"] == {**info["config"]["synth"], "pairs": 6, "unpaired": 3,
                                       "seed": 2, "missing_rate": 0.1}
    assert "numpy" in info["versions"]
    assert (synth_dir / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in synth_dir.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_synth_prints_path_and_summary(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--pairs", "2", "--unpaired", "0", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == str(out)
    assert "split check: OK" in text and "missing EHR values" in text


def test_synth_same_seed_same_cohort(tmp_path, synth_dir):
    again = tmp_path / "again"
    main(["synth", "--out", str(again), "--pairs", "6", "--unpaired", "3", "--seed", "2",
          "--set", "synth.missing_rate=0.1"])
    for name in ("manifest.csv", "cohort.json", "images/000000.npy"):
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes()


def test_synth_refuses_to_overwrite_then_overwrites(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["synth", "--out", str(out), "--pairs", "2", "--unpaired", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").exists()
    assert main(["synth", "--out", str(out), "--pairs", "2", "--unpaired", "0", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and len(Cohort(out).pairs()) == 2


@pytest.mark.parametrize("args,message", [
    (["--pairs", "-1"], "--pairs must be >= 0"),
    (["--set", "synth.bogus=1"], "synth.bogus"),
    (["--preset", "tiny", "--config", "/no/such.yaml"], "config file not found"),
])
def test_synth_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["synth", "--out", str(tmp_path / "c"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("namd synth: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_cohort_info(synth_dir, capsys):
    assert main(["cohort", "info", str(synth_dir)]) == 0
    text = capsys.readouterr().out
    assert "pairs 6" in text and "split check: OK" in text and "SCT_LONG_DIA" in text
    assert main(["cohort", "info", str(synth_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_pairs"] == 6 and summary["split_leaks"] == []


def test_cohort_info_on_a_folder_that_is_not_a_cohort(tmp_path, capsys):
    assert main(["cohort", "info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cohort.json" in err and err.count("\n") == 1


def test_a_damaged_cohort_file_is_one_line_with_the_remedy(synth_dir, tmp_path, capsys):
    bad = tmp_path / "c"
    shutil.copytree(synth_dir, bad)
    text = (bad / "manifest.csv").read_text()
    (bad / "manifest.csv").write_text(text[: len(text) // 2])
    assert main(["cohort", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad / 'manifest.csv'}: cut short" in err
    assert f"namd synth --out {bad} --overwrite" in err
    with pytest.raises(RunFileError):  # -v: the traceback
        main(["-v", "cohort", "info", str(bad)])


@pytest.mark.parametrize("error", [
    StageFailed("stage vae failed: boom"),
    PermissionError(13, "Permission denied", "/run/vae"),
    ValueError("a library message\nover two lines"),
])
def test_expected_errors_are_one_line_and_exit_1(error, monkeypatch, tmp_path, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(namd.cli.commands.cohort, "run_info", fail)
    assert main(["cohort", "info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("namd cohort: error: ") and err.count("\n") == 1
    with pytest.raises(type(error)):
        main(["-v", "cohort", "info", str(tmp_path)])


def test_synth_command_keeps_heavy_imports_inside_run():
    """`namd --help` stays fast: registering `synth` imports neither the generator nor plots."""
    import subprocess
    import sys

    code = ("import sys, argparse, namd.cli.commands.synth as m; "
            "m.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(k for k in ('namd.cohort.synthetic', 'matplotlib', 'scipy', 'pandas') "
            "if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"synth", "cohort"} <= set(sub.choices)
