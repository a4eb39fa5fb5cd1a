"""One writer per stage folder: an exclusive OS file lock held while a command writes it.

`stage_lock(RUN/<stage>)` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on RUN/.locks/<stage>.lock, a
file beside the stage folder rather than in it, so `atomic_dir` can rename the folder itself
while the lock is held. A second namd process asking for the same folder is refused at once
with a one-line error naming the holder's pid (written into the lock file). The kernel drops
an flock when its holder exits, however it exits (SIGKILL included): a lock file may outlive
its process, the lock never does, so there is nothing stale to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCKS = ".locks"


class StageLocked(ValueError):
    """Another process is writing the stage folder (a ValueError, so the CLI prints one line)."""


def lock_path(folder: Path) -> Path:
    """The lock file of a stage folder: RUN/.locks/<stage>.lock."""
    folder = Path(folder)
    return folder.parent / LOCKS / f"{folder.name}.lock"


def _holder(fd: int) -> str:
    """'pid N' from the lock file, or 'pid unknown' while the holder has not written it yet."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


@contextlib.contextmanager
def stage_lock(folder: Path) -> Iterator[Path]:
    """Hold the exclusive lock of `folder` for the body; raise StageLocked when another open
    file (another process, or another `stage_lock` in this one) holds it. Yields the lock file."""
    folder = Path(folder)
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageLocked(f"{folder} is being written by another namd process ({_holder(fd)}); "
                              "wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # still locked: no reader sees a pid that no longer holds it
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
