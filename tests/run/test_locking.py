"""Stage-folder locks: a second writer is refused with the holder's pid, a killed holder leaves
no stale lock, and the stage commands take the lock before writing anything."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from namd.cli.main import main
from namd.run.locking import StageLocked, lock_path, stage_lock

# holds the locks of the folders given as arguments until its stdin closes (or it is killed)
HOLDER = """
import contextlib, sys
from namd.run.locking import stage_lock
with contextlib.ExitStack() as stack:
    for folder in sys.argv[1:]:
        stack.enter_context(stage_lock(folder))
    print("locked", flush=True)
    sys.stdin.read()
"""


def _hold(*folders: Path) -> subprocess.Popen:
    """Start a process holding the locks of `folders`; returns once it holds them."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, folders)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def _message(folder: Path, pid: int) -> str:
    return f"{folder} is being written by another namd process (pid {pid}); wait for it or stop it"


def test_a_second_process_is_refused_until_the_holder_finishes(tmp_path):
    folder = tmp_path / "run" / "prior"
    holder = _hold(folder)
    try:
        with pytest.raises(StageLocked) as refused, stage_lock(folder):
            pass
        assert str(refused.value) == _message(folder, holder.pid)
        assert isinstance(refused.value, ValueError)  # the CLI prints ValueErrors as one line
    finally:
        holder.communicate("")  # closing stdin ends the holder normally
    with stage_lock(folder) as path:
        assert path == tmp_path / "run" / ".locks" / "prior.lock"  # beside the folder, not in it
        assert not folder.exists()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run" / "cond"
    holder = _hold(folder)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert lock_path(folder).is_file()  # the file stays; the kernel dropped the lock itself
    with stage_lock(folder):
        assert lock_path(folder).read_text().strip().isdigit()


def test_a_second_lock_in_the_same_process_is_refused_and_release_frees_it(tmp_path):
    folder = tmp_path / "run" / "eval"
    with stage_lock(folder):
        with pytest.raises(StageLocked, match=r"\(pid \d+\)"), stage_lock(folder):
            pass
    with stage_lock(folder):
        pass
    assert lock_path(folder).read_text() == ""  # no pid left behind for a lock nobody holds


@pytest.fixture(scope="module")
def held_run(tmp_path_factory) -> Iterator[tuple[Path, int]]:
    """A run directory whose prior, vae_no_align, samples_null_context and eval folders another process
    is writing."""
    run = tmp_path_factory.mktemp("locked") / "run"
    holder = _hold(*(run / name for name in ("prior", "vae_no_align", "samples_null_context", "eval")))
    yield run, holder.pid
    holder.communicate("")


@pytest.mark.parametrize(("argv", "folder"), [
    (["train", "prior"], "prior"),
    (["train", "vae", "--method", "no_align"], "vae_no_align"),
    (["sample", "--method", "null_context"], "samples_null_context"),
    (["evaluate"], "eval"),
])
def test_a_second_command_on_the_same_stage_is_refused(held_run, capsys, argv, folder):
    run, pid = held_run
    assert main([*argv, "--run", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"namd {argv[0]}: error: {_message(run / folder, pid)}"
    assert not (run / "config.yaml").exists()  # refused before writing anything
