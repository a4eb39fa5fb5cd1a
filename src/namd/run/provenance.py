"""What every run leaves beside its outputs: atomic writes, provenance and progress bars.

Provenance never holds the raw command line: `run_info.json` records the command with every
path written relative to a stated root (the working directory unless a command states
another), or, inside `recorded_paths(hasher=...)` (`--hash-ids`), with every path and every
value that could be an id replaced by a keyed hash; its `paths` entry says which.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

RUN_INFO = "run_info.json"
_VERSIONED = ("namd", "torch", "numpy", "diffusers", "transformers", "accelerate")


def _umask() -> int:
    """The process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; publish like a normal file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text flavour of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, indented for people."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Serialise numpy scalars, paths and tuples that json does not know."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars alike
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False, reclaim: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and move it into place on success.

    A crash or error leaves no half-written directory under the final name. Replacing an
    existing folder takes two renames (no call swaps directories atomically), so the old one is
    first moved aside to `.<name>.old`, the new one renamed in, then the old one removed: a
    process killed between the renames leaves the complete old folder at `.<name>.old`, which
    the next `atomic_dir` on `final` (or a reader such as `load_checkpoint`) moves back.

    Without `overwrite`, a folder that appears under `final` while this one is built (a second
    command writing the same new folder) is never replaced: this one ends in a FileExistsError
    and is deleted, so of two writers exactly one succeeds (the rename itself refuses a
    non-empty folder, so no check-then-rename window lets both through). `reclaim` first
    deletes what killed writers of `final` left: `.<name>.pid<PID>-*.partial` folders whose
    process no longer runs on this machine (for a folder the user names, `namd predict --out`).
    """
    final = Path(final)
    aside = final.with_name(f".{final.name}.old")
    if aside.is_dir() and not final.exists():  # a replace killed between its two renames
        os.replace(aside, final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    if reclaim:
        reclaim_partials(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.pid{os.getpid()}-",
                                suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; publish like a normal folder
    try:
        yield tmp
        _publish(tmp, final, aside, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path, aside: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `final`: replacing an existing folder only with `overwrite`
    (see `atomic_dir`), else a one-line FileExistsError when one appeared meanwhile."""
    appeared = (f"{final} appeared while this command was writing it (another command writing "
                "the same folder?); it was left as it is (use --overwrite to replace it)")
    if final.exists() and not overwrite:
        raise FileExistsError(appeared)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by a kill during a cleanup: stale
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(appeared) from None
        raise


def reclaim_partials(final: Path) -> list[Path]:
    """Delete the `.<name>.pid<PID>-*.partial` siblings of `final` whose process is gone (killed
    before it could clean up), and return them; those of running processes are left alone."""
    final, removed = Path(final), []
    for path in final.parent.glob(f".{glob.escape(final.name)}.pid*-*.partial"):
        pid = path.name[len(final.name) + 5:].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_WORD = re.compile(r"[a-z][a-z_+-]*")  # sub-commands and choices: no digits, no capitals


def _is_number(text: str) -> bool:
    """True for '3', '-0.5', '1e-4'."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_path(text: str) -> bool:
    """True for a value that names a file or folder (has a separator, or exists)."""
    return bool(text) and ("/" in text or os.sep in text or Path(text).exists())


@dataclass(frozen=True)
class PathPolicy:
    """How provenance writes what the user typed: paths relative to `root`, or with `hasher`
    (--hash-ids) every path and every value that is not a number or a plain word hashed."""

    root: Path
    hasher: Callable[[str], str] | None = None

    def path(self, value: str | Path) -> str:
        """A path as provenance stores it."""
        full = Path(value).expanduser().absolute()
        if self.hasher is not None:
            return f"hash:{self.hasher(str(full))}"
        return Path(os.path.relpath(full, self.root)).as_posix()

    def value(self, text: str) -> str:
        """One command-line value as provenance stores it."""
        if _is_path(text):
            return self.path(text)
        if self.hasher is not None and not (_is_number(text) or _WORD.fullmatch(text)):
            return f"hash:{self.hasher(text)}"
        return text

    def command(self, argv: Sequence[str]) -> str:
        """The command line with its values written by `value` (`--set` keys kept)."""
        out = [Path(argv[0]).name] if argv else []
        for before, token in zip(["", *argv[1:]], argv[1:], strict=False):
            if before == "--set" and "=" in token:
                key, _, val = token.partition("=")
                out.append(f"{key}={self.path(val) if _is_path(val) else val}")
            elif token.startswith("-") and not _is_number(token):
                flag, eq, val = token.partition("=")
                out.append(flag + (eq + self.value(val) if eq else ""))
            else:
                out.append(self.value(token))
        return " ".join(out)

    def describe(self) -> dict[str, Any]:
        """What run_info.json says about its paths."""
        if self.hasher is not None:
            return {"hashed": True, "how": "keyed hashes (HMAC-SHA256) with the --hash-ids key"}
        return {"hashed": False, "relative_to": str(self.root)}


_POLICY: ContextVar[PathPolicy | None] = ContextVar("namd_path_policy", default=None)


def path_policy() -> PathPolicy:
    """The policy in force: the innermost `recorded_paths`, else relative to the working folder."""
    return _POLICY.get() or PathPolicy(Path.cwd())


@contextlib.contextmanager
def recorded_paths(root: str | Path | None = None,
                   hasher: Callable[[str], str] | None = None) -> Iterator[PathPolicy]:
    """Within the block, provenance writes paths relative to `root` (default: the working
    folder), or hashed with `hasher` when one is given (--hash-ids)."""
    policy = PathPolicy(Path(root or Path.cwd()).absolute(), hasher)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


_COMMAND: ContextVar[list[str] | None] = ContextVar("namd_command", default=None)


@contextlib.contextmanager
def recorded_command(argv: list[str]) -> Iterator[None]:
    """Within the block, provenance records `argv` as the command instead of sys.argv: a
    `namd` command called in-process (`namd.cli.main.main([...])`, `namd demo --jobs 1`) is recorded
    as itself, not as its caller's command line."""
    token = _COMMAND.set(list(argv))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def write_run_info(out_dir: Path, config: Any, seed: int | None, **extra: Any) -> dict[str, Any]:
    """Record the resolved config, the seed, package versions and the command beside outputs
    (the command's paths relative or hashed, by `path_policy`)."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    policy = path_policy()
    info = {
        "command": policy.command(_COMMAND.get() or sys.argv),
        "paths": policy.describe(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": uuid.uuid4().hex,  # tells two runs of a stage apart within one second
        "seed": seed,
        "versions": package_versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "config": cfg,
        **extra,
    }
    atomic_write_json(Path(out_dir) / RUN_INFO, info)
    return info


def progress(iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None) -> tqdm:
    """A progress bar with rate and ETA (to stderr); quiet when NAMD_NO_PROGRESS is set."""
    if disable is None:
        disable = bool(os.environ.get("NAMD_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                dynamic_ncols=True, mininterval=0.5)


def hash_files(paths: list[Path], digest: Any) -> None:
    """Feed names and contents of files into a hashlib digest (streamed, sorted by name): the
    fingerprint of a VAE stage and of the cohort a latent cache was encoded from."""
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)


@lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 keyed by (path, size, mtime): a process hashes a large weight file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (cached per path, size and mtime); a missing file is a one-line
    FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (its sha256 cannot be checked)")
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


# -- the sha256 of the weight files a stage wrote, recorded in its run_info.json ----------------
WEIGHTS_KEY = "weights_sha256"  # run_info.json: {path in the stage folder: sha256}


def weights_sha256(folder: Path, files: Iterable[Path]) -> dict[str, str]:
    """{path relative to `folder` (posix): sha256} of a stage's weight files, as its
    run_info.json records them (`file_sha256`, so a reader in this process hashes no more)."""
    folder = Path(folder)
    return {Path(p).relative_to(folder).as_posix(): file_sha256(Path(p)) for p in sorted(files)}
