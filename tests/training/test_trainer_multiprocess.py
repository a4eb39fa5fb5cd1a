"""Data parallelism: two CPU processes with batch B equal one process with batch 2B, also
when each process accumulates two micro-batches of B / 2 (DDP's no_sync, then one all-reduce)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _launch(out: Path, processes: int, batch: int, accum: int = 1) -> None:
    # torchrun + ACCELERATE_USE_CPU: accelerate's multi-CPU (gloo) mode, the CPU stand-in for
    # `accelerate launch --multi_gpu`
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAMD_NO_PROGRESS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--standalone", str(WORKER), str(out), str(batch), str(accum)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_two_processes_average_gradients_like_one_big_batch(tmp_path):
    _launch(tmp_path / "one", 1, 8)
    single = load_file(str(tmp_path / "one/rank0.safetensors"))
    for name, batch, accum in (("two", 4, 1), ("two_accum", 2, 2)):
        _launch(tmp_path / name, 2, batch, accum)
        r0 = load_file(str(tmp_path / name / "rank0.safetensors"))
        r1 = load_file(str(tmp_path / name / "rank1.safetensors"))
        for key in single:
            assert torch.equal(r0[key], r1[key]), f"{name}: ranks diverged: gradients were not synchronised"
            assert torch.allclose(r0[key], single[key], atol=1e-5), (name, key)
