"""The torch device a model loads onto: the one default (CUDA when this machine has it) shared by
`NAMDPipeline`, `namd sample`, `namd evaluate` and the report, and the one-line error for a
device that is not there."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to load onto (default: cuda when available), or a one-line ValueError
    for a name torch does not know or a device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ({str(exc).splitlines()[0]})") from None
    count = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available())}.get(dev.type, 0)
    if count == 0 or (dev.index or 0) >= count:
        raise ValueError(f"device {str(dev)!r} is not available on this machine "
                         f"(CUDA devices: {count if dev.type == 'cuda' else torch.cuda.device_count()}); "
                         "use device='cpu'")
    return dev
