"""How busy the machine was: what a timing needs beside it to be worth quoting.

The 1-minute load average lags and mixes a run's own threads in. These read the kernel's CPU
counters instead: `busy_cpus()` is what other work takes at the moment a run starts, and
`other_cpus_during(start)` the CPUs other work kept busy on average between `snapshot()` and
now (the machine's busy CPU time minus this process's and its finished children's).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def _machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs busy right now, over `seconds` (the load average where /proc/stat is absent)."""
    first = _machine_cpu_seconds()
    if first is None:
        return os.getloadavg()[0]
    time.sleep(seconds)
    second = _machine_cpu_seconds()
    return (second[0] - first[0]) / max(1e-9, second[1] - first[1]) * (os.cpu_count() or 1)


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """The machine's speed now: GFLOP/s of an n x n fp32 matmul on one torch thread (best of
    `repeats`, about half a second). The host of a virtual machine changes speed without any
    load showing here (the 2-core box gave 66-76 at one hour of 2026-12-01 and about 95 at
    another), so two runs' times compare only beside their speeds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(n, n)
        a @ a
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n ** 3 / best / 1e9


def snapshot() -> dict:
    """The start of a timed run: load average, CPUs busy now, the CPU counters and the speed."""
    return {"loadavg": os.getloadavg(), "busy_cpus": busy_cpus(), "_machine_cpu": _machine_cpu_seconds(),
            "_own_cpu": own_cpu_seconds(), "_wall": time.perf_counter(), "matmul_gflops": matmul_gflops()}


def other_cpus_during(start: dict) -> float | None:
    """CPUs other work kept busy, on average, since `snapshot()` (None without /proc/stat)."""
    now, first = _machine_cpu_seconds(), start.get("_machine_cpu")
    if now is None or first is None:
        return None
    wall = max(1e-9, time.perf_counter() - start["_wall"])
    others = (now[0] - first[0]) - (own_cpu_seconds() - start["_own_cpu"])
    return max(0.0, others / wall)


def load_record(start: dict) -> dict:
    """What a results file states about the load of a run begun at `snapshot()`."""
    return {"loadavg_before": start["loadavg"], "busy_cpus_before": start["busy_cpus"],
            "other_cpus_during": other_cpus_during(start), "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(), "matmul_gflops_before": start.get("matmul_gflops"),
            "matmul_gflops_after": matmul_gflops()}
