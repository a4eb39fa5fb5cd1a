"""K virtual follow-ups per nodule from the Flux row's model (RUN/cond_flux): Euler flow
matching (diffusers' FlowMatchEulerDiscreteScheduler with the stage's fixed shift; sigmas
linspace(1, 1/N, N) as FluxPipeline sets them, then 0) from Gaussian noise at s = 1 to x_0,
N = the sampling config's steps, which the sample stage and NAMDPipeline take from
flux.sampling_steps (Method.steps; CPU presets 8, paper preset 28).

The sampler protocol of namd.inference.sampler.FollowUpSampler: `conditioning` computes each
nodule's baseline latent and text states once; `generate` draws sample k of nodule i from the
noise of its own generator, seeded by sample_seed(sampling.seed, pair id, k), and the Euler
update is deterministic after it, so a sample does not depend on the batch (sampling.max_batch)
or on the nodules sampled beside it; `decode` gives crops in HU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from namd.cohort.ehr import EHR
from namd.config import NamdConfig, SamplingConfig
from namd.inference.sampler import decode_to_hu, draw_latents, encode_hu
from namd.models.flux import (
    SCHEDULER_DIR,
    TEXT_FILE,
    FluxText,
    load_transformer,
    velocity,
)
from namd.models.vae import load_trained_vae, vae_fingerprint
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO
from namd.run.readers import read_json, reading

SCHEDULE_FILE = f"{SCHEDULER_DIR}/scheduler_config.json"


@dataclass
class FluxConditioning:
    """Per nodule, computed once: keys (N pair ids), the baseline's scaled latent (N, C, h, w),
    the record's token states (N, L, D) and pooled vector (N, D')."""

    keys: list[str]
    baseline: torch.Tensor
    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)


def euler_sigmas(steps: int) -> np.ndarray:
    """FluxPipeline's sigmas before the scheduler's shift: linspace(1, 1/steps, steps)."""
    return np.linspace(1.0, 1.0 / steps, steps)


@torch.inference_mode()
def integrate(model: torch.nn.Module, schedule: dict[str, Any], steps: int, x: torch.Tensor,
              baseline: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Euler from noise `x` (s = 1) to x_0 for one batch."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(schedule)
    sched.set_timesteps(sigmas=euler_sigmas(steps), device=x.device)
    for t in sched.timesteps:
        s = (t / sched.config.num_train_timesteps).expand(x.shape[0])
        v = velocity(model, x, baseline, s, tokens, pooled)
        x = sched.step(v, t, x).prev_sample.to(x.dtype)
    return x


class FluxSampler:
    """The Flux row's transformer, frozen VAE and scale factor, and text path, ready to draw."""

    def __init__(self, model: torch.nn.Module, vae: torch.nn.Module, scale_factor: float,
                 text: FluxText, schedule: dict[str, Any],
                 latent_shape: tuple[int, int, int], window: tuple[float, float],
                 device: torch.device | str = "cpu"):
        self.model, self.vae, self.scale, self.text = model, vae, scale_factor, text
        self.latent_shape = tuple(int(v) for v in latent_shape)  # (C, h, w) of a follow-up
        self.schedule, self.window, self.device = schedule, window, device

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu") -> FluxSampler:
        """Load RUN/cond_flux and the VAE it was trained on; refuses a VAE changed since. A
        missing or damaged file is a RunFileError naming it (the VAE is read before its
        fingerprint is compared, so damage is never taken for a retrained VAE)."""
        cond_dir, vae_dir = run.require(dirs["cond"], "sample"), run.require(dirs["vae"], "sample")
        if not run.is_done(dirs["cond"]):
            raise RunFileError(cond_dir / RUN_INFO, "missing or not complete: the stage did not finish")
        for stage in (dirs["vae"], dirs["cond"]):
            run.agree(config, stage)
        info = read_json(cond_dir / RUN_INFO, keys=("latent_shape",))
        spec = read_json(cond_dir / TEXT_FILE, keys=("text_encoder", "text", "length", "dim", "pooled_dim"))
        schedule = read_json(cond_dir / SCHEDULE_FILE, keys=("shift",))
        with reading(cond_dir / SCHEDULE_FILE):
            FlowMatchEulerDiscreteScheduler.from_config(schedule)  # a schedule diffusers can use
        model = load_transformer(cond_dir, device)
        vae, scale = load_trained_vae(vae_dir, device)
        if info.get("vae_fingerprint") and info["vae_fingerprint"] != vae_fingerprint(vae_dir):
            raise ValueError(f"{vae_dir} changed after {cond_dir} was trained on it; retrain it "
                             "(namd train cond --method flux --overwrite)")
        with reading(cond_dir / TEXT_FILE):
            text = FluxText.from_spec(spec)
        if (text.dim, text.pooled_dim) != (spec["dim"], spec["pooled_dim"]):
            raise RunFileError(cond_dir / TEXT_FILE, f"its text path now gives widths {text.dim} / "
                               f"{text.pooled_dim}, but the stage was trained with {spec['dim']} / "
                               f"{spec['pooled_dim']}")
        return cls(model, vae, scale, text, schedule, tuple(info["latent_shape"]), tuple(config.data.window_hu), device)

    def info(self) -> dict[str, Any]:
        """How it samples, for the sample stage's run_info.json."""
        return {"sampler": "flow-matching Euler", "shift": float(self.schedule.get("shift", 1.0))}

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence[EHR],
                     batch: int = 16) -> FluxConditioning:
        """Baseline latents and text states, each computed once per nodule."""
        z1 = encode_hu(self.vae, baselines_hu, self.scale, self.window, batch, self.device)
        parts = [self.text.encode(list(ehrs[s:s + batch])) for s in range(0, len(ehrs), batch)]
        tokens = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, self.text.length, self.text.dim)
        pooled = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, self.text.pooled_dim)
        return FluxConditioning(list(keys), z1, tokens, pooled)

    @torch.inference_mode()
    def generate(self, cond: FluxConditioning, cfg: SamplingConfig, show_progress: bool = True) -> torch.Tensor:
        """(N, K, C, h, w) scaled latents in cfg.steps Euler steps, at most cfg.max_batch per
        transformer call."""
        dtype = next(self.model.parameters()).dtype

        def run(x: torch.Tensor, nodule: torch.Tensor, _gens: list) -> torch.Tensor:
            return integrate(self.model, self.schedule, cfg.steps, x,
                             cond.baseline[nodule].to(self.device, dtype),
                             cond.tokens[nodule].to(self.device, dtype),
                             cond.pooled[nodule].to(self.device, dtype))

        return draw_latents(cond.keys, cfg, self.latent_shape, dtype, self.device, run,
                            cfg.max_batch, show_progress)

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, C, h, w) latents -> (M, H, W) crops in HU."""
        return decode_to_hu(self.vae, latents, self.scale, self.window, batch, self.device)
