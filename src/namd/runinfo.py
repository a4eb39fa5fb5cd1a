"""What every run leaves beside its outputs: atomic writes, provenance and progress bars."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
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
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and move it into place on success.

    A crash or error leaves no half-written directory under the final name.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; publish like a normal folder
    try:
        yield tmp
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_run_info(out_dir: Path, config: Any, seed: int | None, **extra: Any) -> dict[str, Any]:
    """Record the resolved config, the seed, package versions and the command beside outputs."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    info = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
