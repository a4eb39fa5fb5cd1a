"""What every benchmark script does with its numbers: note the machine and publish the record
as JSON (raw) and Markdown (for people), atomically, then print the Markdown."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from namd.runinfo import atomic_write_json, atomic_write_text


def machine(loadavg_before: tuple[float, float, float]) -> dict:
    """Platform, CPU count, torch version and the load average before and now."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()}


def publish(out: str | Path, record: dict, markdown: Callable[[dict], str]) -> None:
    """Write OUT.json and OUT.md and print the Markdown."""
    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), record)
    text = markdown(record)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
