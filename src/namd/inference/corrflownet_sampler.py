"""CorrFlowNet-style trained model, ready to draw virtual follow-ups (the table's samplers of
corrflownet_ode and corrflownet_sde): RUN/cond_corrflownet's flow on RUN/autoencoder_corrflownet's
autoencoder.

Both rows start from the baseline's scaled latent (the autoencoder's posterior mean x the
flow's latent_scale) and integrate the learnt velocity from t = 0 to 1 over cfg.steps uniform
steps (the sample stage sets them from corrflownet.sampling_steps), then decode:

- ODE (`CorrFlowNetSampler.ode`): Euler; no randomness at all, so every k of a nodule is the
  same (the method is deterministic: the sample stage draws k = 1);
- SDE (`CorrFlowNetSampler.sde`): Euler-Maruyama with the diffusion corrflownet.sde_scale x
  sqrt(t (1 - t)) dW (project's choice: a Brownian-bridge-shaped term that vanishes at the
  baseline and adds nothing in the last step, so the spread stays small, as the paper's SDE row's
  AUROC +- 0.004). Each step's noise of sample k of nodule i comes from its own generator
  (namd.inference.sampler.draw_latents: seeded by sample_seed(seed, pair id, k)), so the sample
  does not depend on the batch, and differs over k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from namd.cohort.imaging import hu_to_unit, unit_to_hu
from namd.config import NamdConfig, SamplingConfig
from namd.inference.sampler import draw_latents, finished_stage, seeded_noise
from namd.models.corrflownet import (
    AE_WEIGHTS,
    CorrAutoencoder,
    integrate,
    load_autoencoder,
    load_flow,
    velocity,
)
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, file_sha256
from namd.run.readers import read_json


@dataclass
class FlowConditioning:
    """Per nodule, computed once: keys (pair ids) and the baseline's scaled latent (N, C, h, w)."""

    keys: list[str]
    baseline: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)


class CorrFlowNetSampler:
    """The autoencoder (frozen), the velocity network, the latent scale and the diffusion scale
    (0: the ODE row)."""

    def __init__(self, ae: CorrAutoencoder, net: torch.nn.Module, spec: dict[str, Any],
                 window: tuple[float, float], sde_scale: float = 0.0, device: torch.device | str = "cpu"):
        self.vae, self.net, self.window, self.device = ae, net, window, device
        self.scale = float(spec["latent_scale"])
        self.conditioned = bool(spec["condition_on_baseline"])
        self.shape = tuple(int(v) for v in spec["latent_shape"])
        self.sde_scale = float(sde_scale)

    @classmethod
    def ode(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
            device: torch.device | str = "cpu") -> CorrFlowNetSampler:
        """The ODE row: Euler from the baseline's latent, deterministic."""
        return cls.from_run(run, dirs, config, device, sde_scale=0.0)

    @classmethod
    def sde(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
            device: torch.device | str = "cpu") -> CorrFlowNetSampler:
        """The SDE row: the same flow with corrflownet.sde_scale's diffusion term."""
        return cls.from_run(run, dirs, config, device, sde_scale=config.corrflownet.sde_scale)

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu", sde_scale: float = 0.0) -> CorrFlowNetSampler:
        """Load both stages (finished, agreeing with the config); refuses an autoencoder changed
        since the flow was trained on it. A missing or damaged file: RunFileError naming it."""
        folders = {kind: finished_stage(run, dirs[kind], config) for kind in ("autoencoder", "cond")}
        ae, _ = load_autoencoder(folders["autoencoder"], device)
        net, spec = load_flow(folders["cond"], device)
        trained_on = read_json(folders["cond"] / RUN_INFO).get("autoencoder_sha256")
        if trained_on and trained_on != file_sha256(folders["autoencoder"] / AE_WEIGHTS):
            raise ValueError(f"{folders['autoencoder']} changed after {folders['cond']} was trained "
                             "on it; retrain it (namd train cond --method corrflownet_ode --overwrite)")
        return cls(ae, net, spec, tuple(config.data.window_hu), sde_scale, device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the scaled latents `generate` returns and `decode` takes."""
        c, h, w = self.shape
        return c, h, w

    @property
    def stochastic(self) -> bool:
        """Whether samples are random draws (the SDE row with a positive scale)."""
        return self.sde_scale > 0

    def info(self) -> dict[str, Any]:
        """How it samples, for the sample stage's run_info.json."""
        if not self.stochastic:
            return {"sampler": "euler_ode", "deterministic": True, "starts_from": "baseline latent"}
        return {"sampler": "euler_maruyama_sde", "deterministic": False, "starts_from": "baseline latent",
                "diffusion": "sde_scale * sqrt(t (1 - t)) dW", "sde_scale": self.sde_scale}

    @torch.inference_mode()
    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> FlowConditioning:
        """The baselines' scaled latents (posterior means), once per nodule (records unused)."""
        x = torch.from_numpy(hu_to_unit(np.asarray(baselines_hu, np.float32), self.window))[:, None]
        parts = [self.vae.encode(x[s:s + batch].to(self.device))[0].float().cpu()
                 for s in range(0, len(x), batch)]
        z = torch.cat(parts) if parts else torch.zeros(0, *self.latent_shape)
        return FlowConditioning(list(keys), z * self.scale)

    @torch.inference_mode()
    def generate(self, cond: FlowConditioning, cfg: SamplingConfig, show_progress: bool = True) -> torch.Tensor:
        """(N, K, C, h, w) scaled latents of the follow-ups, cfg.steps steps each."""
        dtype = next(self.net.parameters()).dtype

        def run(x: torch.Tensor, nodule: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
            zb = cond.baseline[nodule].to(self.device, dtype)

            def drift(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return velocity(self.net, z, t, zb if self.conditioned else None)

            return integrate(drift, zb, cfg.steps, self.sde_scale,
                             lambda: seeded_noise(gens, self.latent_shape).to(self.device, dtype))

        return draw_latents(cond.keys, cfg, self.latent_shape, dtype, self.device, run, cfg.max_batch,
                            show_progress)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, C, h, w) scaled latents -> (M, H, W) crops in HU (float32)."""
        parts = []
        for s in range(0, len(latents), batch):
            z = latents[s:s + batch].to(self.device, next(self.vae.parameters()).dtype) / self.scale
            parts.append(unit_to_hu(self.vae.decode(z)[:, 0].float().cpu(), self.window).numpy())
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0, 0), np.float32)
