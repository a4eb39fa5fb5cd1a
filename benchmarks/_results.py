"""What every benchmark script does with its numbers: note the machine and the load it ran under,
and publish the record as JSON (raw) and Markdown (for people), atomically, then print the
Markdown."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from namd.run.machine import load_record, snapshot
from namd.run.provenance import atomic_write_json, atomic_write_text


def start_load() -> dict:
    """What to pass to `machine()` at the start of a run (`namd.run.machine.snapshot`)."""
    return snapshot()


def machine(before: dict, threads: int | None = None) -> dict:
    """Platform, CPU count, torch version, torch threads, the load before and after, and whether
    the machine was loaded: on a shared machine wall times are only worth quoting when nothing
    else ran. `before` is `start_load()`. Loaded = other work kept more than a quarter of the
    cores busy on average during the run (`other_cpus_during`, or the CPUs busy at the start
    where /proc/stat is absent; stricter than half the cores, since on two cores half a core of
    other work already changes a two-thread timing by a quarter). `threads` defaults to
    torch.get_num_threads() now; a script whose work runs in other processes passes the threads
    they used in all (their CPU time counts as ours once they have finished, as children)."""
    record = load_record(before)  # the load and the machine's speed, as RUN/pipeline.json has them
    cpus, during = os.cpu_count() or 1, record["other_cpus_during"]
    return {"platform": platform.platform(), "torch": torch.__version__, **record, "cpus": cpus,
            "threads": torch.get_num_threads() if threads is None else threads,
            "loaded": bool((during if during is not None else before["busy_cpus"]) > cpus / 4)}


def load_line(m: dict) -> str:
    """One Markdown sentence on the load a `machine()` record was taken under, so every results
    file says it the same way; a second, bold one when the machine was loaded."""
    busy, during = m.get("busy_cpus_before"), m.get("other_cpus_during")
    now = "" if busy is None else f"{busy:.2f} CPUs busy at the start, "
    now += "" if during is None else f"{during:.2f} CPUs of other work on average during the run, "
    line = (f"Load: {m['threads']} torch thread(s) on {m['cpus']} CPUs; {now}load average "
            f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after.")
    line += speed_line(m)
    if m["loaded"]:
        line += (" **Taken on a loaded machine (other work on more than a quarter of the cores): "
                 "not to be quoted.**")
    return line


def speed_line(m: dict) -> str:
    """' Machine speed ...' of a record with matmul_gflops_before/after (a `machine()` record
    or RUN/pipeline.json), or '' for a record taken before the speed was recorded."""
    if m.get("matmul_gflops_before") is None:
        return ""
    return (f" Machine speed (one-thread 1024^2 fp32 matmul): {m['matmul_gflops_before']:.0f} "
            f"GFLOP/s before, {m['matmul_gflops_after']:.0f} after.")


def publish(out: str | Path | None, record: dict, markdown: Callable[[dict], str]) -> None:
    """Write OUT.json and OUT.md (nothing when `out` is None) and print the Markdown. When the
    record has a `machine()` dict and the Markdown does not state the load, its `load_line` is
    added as a last paragraph, so no published result is silent about the load it ran under."""
    text = markdown(record)
    if isinstance(record.get("machine"), dict) and "Load: " not in text:
        text = text.rstrip("\n") + "\n\n" + load_line(record["machine"]) + "\n"
    if out is not None:
        out = Path(out)
        atomic_write_json(out.with_suffix(".json"), record)
        atomic_write_text(out.with_suffix(".md"), text)
    print(text)
