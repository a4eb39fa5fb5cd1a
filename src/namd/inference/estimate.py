"""What a sampling request will cost, said before it starts: `namd sample` and `namd predict`
print `Estimate.line()` before sampling begins, and `namd serve` refuses a click whose estimate
is past its bound.

The rule (constants measured by benchmarks/sampling_estimate.py on this project's 2-CPU
machine; benchmarks/results/sampling_estimate.md compares the estimate with measured times at
four network sizes, from the helpers' smallest to the paper's U-Net and VAE):

    time   = N K steps g x U-Net FLOPs / (UNET_FLOPS x sqrt(threads))
             + N K x decode FLOPs / (DECODE_FLOPS x sqrt(threads)) + U-Net calls x CALL_SECONDS
             (g = 2 with classifier-free guidance; calls = steps x ceil(N K g / max_batch);
             the FLOPs of one latent's U-Net forward and of one crop's VAE decode are counted
             by torch's FLOP counter on a meta copy of the model's own networks, built from its
             unet/ and vae/ config.json, so no weight is read; the rates are one CPU thread's.
             No rate is measured for a GPU: there the time is not estimated.)
    memory = BASE_BYTES (python, torch, diffusers) + the weight files (U-Net, VAE, context
             encoder; not a language model's) + the latents (N K C h w float32) + one U-Net
             call's activations (max_batch latents x the largest tensor of one latent's
             forward x ACT_COPIES) + with the samples kept in memory (predict, the API) twice
             N K H W float32 (the decoded parts and their concatenation)
    disk   = N K H W float32 (samples.npy) + the PNG grids

The context encoder and the VAE encoding of the N baselines are left out: once per nodule, not
per sample (7% of the tiny preset's 130 x 20 x DDIM 10 in benchmarks/results/sampling.md); so
is predict's evaluator on the K crops (counted the same way: 0.02 GFLOP per crop at the tiny
preset, 6.7 at the paper's, 2% of a sample's U-Net and decode FLOPs at either). The time is
the sampling's, on an otherwise idle machine: loading the models comes on top, and on a busy
machine two torch threads can run many times slower than the rule says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One CPU thread (benchmarks/sampling_estimate.py, two runs on the shared 2-CPU machine: U-Net
# 23.5 and 34 GFLOP/s, decode 37.5 and 72, on the tiny preset's networks; larger networks run
# faster, so the estimate errs long for them, by up to 2.8x at the sizes measured). More threads
# count as sqrt(threads): benchmarks/results/sampling.md's 2-thread run gives the U-Net 1.2x
# and the decode 1.5x these one-thread rates.
UNET_FLOPS = 28e9  # FLOP/s of one thread in the denoising loop (U-Net forward + scheduler)
DECODE_FLOPS = 50e9  # FLOP/s of one thread in the VAE decode
CALL_SECONDS = 0.004  # fixed cost of one U-Net call (python, diffusers, small kernels): 3.3-3.7 ms
BASE_BYTES = 600e6  # a namd process with torch and diffusers loaded, no model
ACT_COPIES = 4  # tensors of the largest size alive at once during a U-Net forward
GRID_BYTES = 300e3  # one PNG grid


@dataclass(frozen=True)
class ModelCost:
    """What one latent and one crop cost a model: FLOPs of one U-Net forward (one latent,
    one step) and of one VAE decode (one crop), the largest tensor of that U-Net forward,
    the latent's (C, h, w) and the bytes of the weight files."""

    unet_flops: float
    decode_flops: float
    unet_peak_bytes: int
    latent: tuple[int, int, int]
    weight_bytes: int


@dataclass(frozen=True)
class Request:
    """N nodules x K samples x steps, and the batch sizes the sampler uses."""

    nodules: int
    k: int
    steps: int
    crop_size: int
    guidance: bool = False
    max_batch: int = 256
    samples_in_memory: bool = False  # predict and the API keep all N K crops in memory


@dataclass(frozen=True)
class Estimate:
    """Seconds (None where no rate is measured), peak memory and disk bytes of a request."""

    request: Request
    seconds: float | None
    memory_bytes: float
    disk_bytes: float
    device: str

    def line(self) -> str:
        """One line, printed before sampling starts."""
        r = self.request
        if self.seconds is not None:
            when = f"about {duration(self.seconds)} on this {self.device} ({_threads()} threads)"
        elif self.device != "cpu":
            when = f"time not estimated on {self.device} (rates measured on a CPU only)"
        else:
            when = "time not estimated (no readable U-Net and VAE config to count)"
        return (f"estimate: {r.nodules} nodule(s) x K = {r.k} x {r.steps} steps = "
                f"{r.nodules * r.k * r.steps:,} latent-steps: {when}, about "
                f"{size(self.memory_bytes)} of memory, {size(self.disk_bytes)} on disk "
                "(rule: namd.inference.estimate)")


def duration(seconds: float) -> str:
    """'40 s', '12 min', '9.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def size(n: float) -> str:
    """'310 MB', '21.3 GB'."""
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def _threads() -> int:
    """torch's intra-op threads (what the CPU rates scale with)."""
    import torch

    return torch.get_num_threads()


def _counted(module: Any, *args: Any, **kwargs: Any) -> tuple[float, int]:
    """FLOPs and the largest output tensor (bytes) of one forward, on meta tensors."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Peak(TorchDispatchMode):
        """Track the largest tensor any operation returns."""

        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Peak.largest = max(Peak.largest, t.numel() * t.element_size())
            return out

    with FlopCounterMode(display=False) as flops, Peak():
        module(*args, **kwargs)
    return float(flops.get_total_flops()), int(Peak.largest)


def model_cost(files: Mapping[str, Path]) -> ModelCost:
    """The cost of a model from its files, keyed as in a model folder ('unet/config.json',
    'vae/config.json', 'context_encoder/context_encoder.json' and the weights): networks
    built on the meta device from their configs, one forward each counted."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = json.loads(Path(files["unet/config.json"]).read_text())
    vae_cfg = json.loads(Path(files["vae/config.json"]).read_text())
    spec_path = files.get("context_encoder/context_encoder.json")
    tokens = json.loads(Path(spec_path).read_text()).get("n_tokens", 77) if spec_path else 77
    size_ = unet_cfg["sample_size"]
    side = int(size_ if isinstance(size_, int) else size_[0])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        x = torch.zeros(1, unet.config.in_channels, side, side)
        ctx = torch.zeros(1, int(tokens), int(unet.config.cross_attention_dim))
        unet_flops, peak = _counted(unet, x, torch.tensor([1]), encoder_hidden_states=ctx)
        z = torch.zeros(1, vae.config.latent_channels, side, side)
        decode_flops, _ = _counted(vae.decode, z)
    weights = sum(Path(p).stat().st_size for rel, p in files.items()
                  if rel.endswith(".safetensors") and not rel.startswith("evaluator/"))
    return ModelCost(unet_flops, decode_flops, peak, (int(unet.config.out_channels), side, side), weights)


def estimate(request: Request, cost: ModelCost | None, device: str = "cpu",
             grids: int = 1) -> Estimate:
    """The time, memory and disk of `request` by the rule of the module docstring (with no
    model cost, e.g. a method without a U-Net: memory and disk of its outputs only)."""
    r, n = request, request.nodules * request.k
    crop = r.crop_size * r.crop_size * 4
    disk = n * crop + grids * GRID_BYTES
    memory = BASE_BYTES + (2 * n * crop if r.samples_in_memory else 0)
    if cost is None:
        return Estimate(r, None, memory, disk, device)
    g = 2 if r.guidance else 1
    per_call = max(1, r.max_batch // g)
    memory += cost.weight_bytes + n * math.prod(cost.latent) * 4
    memory += min(n, per_call) * g * cost.unet_peak_bytes * ACT_COPIES
    seconds = None
    if str(device).startswith("cpu"):
        speedup = math.sqrt(_threads())
        calls = r.steps * math.ceil(n / per_call)
        seconds = (n * r.steps * g * cost.unet_flops / (UNET_FLOPS * speedup)
                   + n * cost.decode_flops / (DECODE_FLOPS * speedup) + calls * CALL_SECONDS)
    return Estimate(r, seconds, memory, disk, str(device).split(":")[0])


def safe_model_cost(files: Mapping[str, Path]) -> ModelCost | None:
    """`model_cost`, or None when a file it reads is missing or unreadable: the estimate is
    then printed without a time, and the loader that needs the file names it in one line."""
    try:
        return model_cost(files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["Estimate", "ModelCost", "Request", "estimate", "model_cost", "safe_model_cost"]
