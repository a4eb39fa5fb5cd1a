"""What every benchmark script does with its numbers: note the machine and the load it ran under,
and publish the record as JSON (raw) and Markdown (for people), atomically, then print the
Markdown."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from namd.runinfo import atomic_write_json, atomic_write_text


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs busy right now (from /proc/stat over `seconds`; the load average where it is absent).
    The 1-minute load average decays slowly, so right after one benchmark it still reads as a
    loaded machine; this is what other work takes at the moment a benchmark starts."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return os.getloadavg()[0]
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def start_load() -> dict:
    """What to pass to `machine()` at the start of a run: the load average and the CPUs busy."""
    return {"loadavg": os.getloadavg(), "busy_cpus": busy_cpus()}


def machine(before: tuple[float, float, float] | dict, threads: int | None = None) -> dict:
    """Platform, CPU count, torch version, torch threads, the load before and now, and whether
    the machine was loaded: on a shared machine wall times are only worth quoting when nothing
    else ran. `before` is `start_load()` (or a bare load average). Loaded = more than half the
    cores busy when the run started (`busy_cpus`, or the 1-minute load average when only that is
    given), or the 1-minute load after above half the cores plus the run's own threads (other
    work started meanwhile). `threads` defaults to torch.get_num_threads() now; a script whose
    work runs in other processes passes the threads they used in all."""
    cpus = os.cpu_count()
    threads = torch.get_num_threads() if threads is None else threads
    loadavg = before["loadavg"] if isinstance(before, dict) else before
    busy = before.get("busy_cpus") if isinstance(before, dict) else None
    after = os.getloadavg()
    half = (cpus or 1) / 2
    loaded = (busy if busy is not None else loadavg[0]) > half or after[0] > half + threads
    return {"platform": platform.platform(), "cpus": cpus, "torch": torch.__version__,
            "loadavg_before": loadavg, "busy_cpus_before": busy, "loadavg_after": after,
            "threads": threads, "loaded": bool(loaded)}


def load_line(m: dict) -> str:
    """One Markdown sentence on the load a `machine()` record was taken under, so every results
    file says it the same way; a second, bold one when the machine was loaded."""
    busy = m.get("busy_cpus_before")
    now = "" if busy is None else f"{busy:.2f} CPUs busy at the start, "
    line = (f"Load: {m['threads']} torch thread(s) on {m['cpus']} CPUs; {now}load average "
            f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after.")
    if m["loaded"]:
        line += (" **Taken on a loaded machine (load above half the cores from other work): "
                 "not to be quoted.**")
    return line


def publish(out: str | Path, record: dict, markdown: Callable[[dict], str]) -> None:
    """Write OUT.json and OUT.md and print the Markdown. When the record has a `machine()` dict
    and the Markdown does not state the load, its `load_line` is added as a last paragraph, so
    no published result is silent about the load it ran under."""
    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), record)
    text = markdown(record)
    if isinstance(record.get("machine"), dict) and "Load: " not in text:
        text = text.rstrip("\n") + "\n\n" + load_line(record["machine"]) + "\n"
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
