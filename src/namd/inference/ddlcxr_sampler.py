"""DDL-CXR's trained model, ready to draw virtual follow-ups (the table's `sampler` of ddlcxr):
RUN/cond_ddlcxr's U-Net and record encoder on RUN/vae_ddlcxr's VAE.

Its sampler (the source's DDIMSampler): DDIM over the stage's own saved DDPM schedule, CompVis
timesteps (uniform, shifted by one; alpha_prev of the last step = alphas_cumprod[0]), eta =
ddlcxr.sampling_eta (1: a fresh Gaussian per step), ddlcxr.sampling_steps steps (source 200; CPU presets 10). The
source starts every sample from one fixed x_T (its global_noise); here x_T is drawn per sample
seed, or the K samples of a nodule would differ only by the per-step noise (project's choice,
docs/compared-methods.md). Sample k of nodule i draws x_T and every step's noise from its own
generator, seeded by namd.inference.sampler.sample_seed(sampling.seed, pair id, k), so it does
not depend on the batch (namd.inference.sampler.sample_latents, shared with NAMD's sampler).
The steps are the sampling config's, which the sample stage and NAMDPipeline take from
ddlcxr.sampling_steps (Method.steps); eta is ddlcxr.sampling_eta, read at from_run; K, the
seed and the batch are sampling.*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from namd.config import NamdConfig, SamplingConfig, validated_update
from namd.config.diffusion import check_sampling_steps
from namd.inference.sampler import (
    Conditioning,
    decode_to_hu,
    encode_hu,
    sample_latents,
    unet_latent_shape,
)
from namd.models.ddlcxr import RecordEncoder, load_record_encoder
from namd.models.schedules import load_scheduler_config
from namd.models.unet import load_unet
from namd.models.vae import load_trained_vae, vae_fingerprint
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO
from namd.run.readers import read_json


class DDLCXRSampler:
    """U-Net, record encoder, frozen VAE and its scale factor, the DDPM schedule, DDIM settings."""

    def __init__(self, unet: torch.nn.Module, encoder: RecordEncoder, vae: torch.nn.Module,
                 scale_factor: float, schedule: dict[str, Any], window: tuple[float, float],
                 eta: float, device: torch.device | str = "cpu"):
        self.unet, self.encoder, self.vae, self.scale = unet, encoder, vae, scale_factor
        self.schedule, self.window, self.device = schedule, window, device
        self.eta = eta

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu") -> DDLCXRSampler:
        """Load cond_ddlcxr and the VAE it was trained on; refuses a VAE changed since. Every
        file is read through namd.run.readers (a missing or damaged one: RunFileError naming it)."""
        cond_dir, vae_dir = run.require(dirs["cond"], "sample"), run.require(dirs["vae"], "sample")
        if not run.is_done(dirs["cond"]):
            raise RunFileError(cond_dir / RUN_INFO, "missing or not complete: the stage did not finish")
        for stage in (dirs["vae"], dirs["cond"]):
            run.agree(config, stage)
        info = read_json(cond_dir / RUN_INFO)
        schedule = load_scheduler_config(cond_dir)
        unet = load_unet(cond_dir, device)
        encoder = load_record_encoder(cond_dir, device)
        vae, scale = load_trained_vae(vae_dir, device)
        if info.get("vae_fingerprint") and info["vae_fingerprint"] != vae_fingerprint(vae_dir):
            raise ValueError(f"{vae_dir} changed after {cond_dir} was trained on it; retrain it "
                             "(namd train cond --method ddlcxr --overwrite)")
        return cls(unet, encoder, vae, scale, schedule, tuple(config.data.window_hu),
                   config.ddlcxr.sampling_eta, device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the follow-up latent."""
        return unet_latent_shape(self.unet)

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> Conditioning:
        """Baseline latents and the record's tokens, once per nodule (the encoder in eval mode)."""
        z1 = encode_hu(self.vae, baselines_hu, self.scale, self.window, batch, self.device)
        parts = []
        with torch.inference_mode():
            for s in range(0, len(ehrs), batch):
                parts.append(self.encoder(list(ehrs[s:s + batch]))[1].float().cpu())
        tokens = torch.cat(parts) if parts else torch.zeros(0, self.encoder.n_tokens, self.encoder.dim)
        return Conditioning(list(keys), z1, tokens, torch.zeros(self.encoder.n_tokens, self.encoder.dim))

    def sampling_config(self, cfg: SamplingConfig) -> SamplingConfig:
        """cfg (K, seed, batch, steps) with DDL-CXR's sampler: DDIM, its eta, CompVis spacing."""
        return validated_update(cfg, {"scheduler": "ddim", "eta": self.eta,
                                      "timestep_spacing": "leading", "steps_offset": 1,
                                      "guidance_scale": 1.0}, "sampling")

    def info(self) -> dict[str, Any]:
        """How it samples, for the sample stage's run_info.json."""
        return {"sampler": "ddim", "eta": self.eta}

    def generate(self, cond: Conditioning, cfg: SamplingConfig, show_progress: bool = True) -> torch.Tensor:
        """(N, K, C, h, w) latents of the virtual follow-ups."""
        own = self.sampling_config(cfg)
        check_sampling_steps(own, int(self.schedule.get("num_train_timesteps", 1000)))
        return sample_latents(self.unet, self.schedule, cond, own, self.latent_shape, self.device,
                              show_progress)

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, C, h, w) latents -> (M, H, W) crops in HU."""
        return decode_to_hu(self.vae, latents, self.scale, self.window, batch, self.device)
