"""Safetensors checkpoints for the shared trainer: module weights, AdamW state and progress.

Nothing is pickled: optimizer state is flattened into tensors, its hyper-parameters and the
trainer's counters go to JSON. A checkpoint directory is written atomically (`atomic_dir`): a
process killed while writing leaves the previous checkpoint readable, at its own name or, when
the kill fell between atomic_dir's two renames, at the aside name `.<name>.old` that the readers
here fall back to and `recover` moves back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from namd.run.provenance import atomic_dir, atomic_write_json
from namd.run.readers import load_safetensors, read_json

STATE = "state.json"


def aside_of(path: Path) -> Path:
    """Where `atomic_dir` keeps the folder it replaces until the new one is renamed in."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def resolve(path: Path) -> Path:
    """The readable checkpoint at `path`: itself, or its aside copy after a kill mid-replace."""
    path = Path(path)
    if not (path / STATE).is_file() and (aside_of(path) / STATE).is_file():
        return aside_of(path)
    return path


def has_checkpoint(path: Path) -> bool:
    """True when `path` (or its aside copy) holds a complete checkpoint."""
    return (resolve(path) / STATE).is_file()


def recover(path: Path) -> None:
    """Undo what a killed write of checkpoint `path` left: move the aside copy back into place
    and delete half-written `.<name>.*.partial` folders. Only for the single writer of `path`
    (the trainer's main process), whose own writes are then not in flight."""
    path = Path(path)
    aside = aside_of(path)
    if aside.is_dir() and not path.exists():
        aside.replace(path)
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def save_module(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a module's state dict as safetensors (contiguous copies, shared tensors untied)."""
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def load_module(module: torch.nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights into a module, with a clear error when the file is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    module.load_state_dict(load_safetensors(Path(path)), strict=strict)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu().clone()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       plain: dict[str, Any]) -> None:
    """Rebuild the optimizer state dict from its flattened form."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in plain["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
    """Write modules, optimizer and trainer state into `path` atomically."""
    with atomic_dir(Path(path), overwrite=True) as tmp:
        for name, module in modules.items():
            save_module(module, tmp / f"{name}.safetensors")
        extra: dict[str, Any] = {}
        if optimizer is not None:
            tensors, extra = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / STATE, {**state, "optimizer": extra})


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore modules (and optimizer) from `path` (or its aside copy); returns the trainer state."""
    path = resolve(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"no checkpoint in {path} (expected {STATE})")
    state = read_json(path / STATE)
    for name, module in modules.items():
        load_module(module, path / f"{name}.safetensors")
    if optimizer is not None and (path / "optimizer.safetensors").is_file():
        _restore_optimizer(optimizer, load_safetensors(path / "optimizer.safetensors"), state["optimizer"])
    return state


def load_best(out: Path, modules: dict[str, torch.nn.Module]) -> dict:
    """Load the best (validation-selected) weights of a finished stage into `modules`.

    With EMA the best checkpoint holds `ema_<name>` files; they are loaded into `<name>`.
    """
    best = resolve(Path(out) / "checkpoints" / "best")
    if any((best / f"ema_{k}.safetensors").is_file() for k in modules):
        return load_checkpoint(best, {f"ema_{k}": m for k, m in modules.items()}, None)
    return load_checkpoint(best, modules, None)
