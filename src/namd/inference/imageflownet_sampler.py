"""ImageFlowNet's trained model, ready to draw virtual follow-ups (the table's `sampler` of
imageflownet): RUN/cond_imageflownet's model.json / model.safetensors, the whole network (its
frozen U-Net and trained SDEs); nothing else is read.

Sampling (Liu et al., ICASSP 2025): the baseline crop (window units) is encoded once per chunk's
nodule, its skip features and bottleneck evolve over the one-year interval by cfg.steps
Euler-Maruyama steps (the sample stage sets them from imageflownet.sampling_steps; source dt
0.05 = 20), and the decoder reads the evolved features: one follow-up per draw of the SDEs'
noise. Every noise draw of sample k of nodule i comes from its own generator (seeded by
namd.inference.sampler.sample_seed(sampling.seed, pair id, k), via draw_latents): one flat
standard normal vector per Euler-Maruyama step, split over the feature maps, so the sample does
not depend on the batch. draw_latents' initial draw (a noise image) is not used: the flow
starts from the baseline. The "latents" are the follow-up crops themselves, (1, H, W) in
[-1, 1] window units; `decode` maps them back to HU (namd.cohort.imaging.unit_to_hu).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from namd.config import NamdConfig, SamplingConfig
from namd.inference.sampler import (
    PixelConditioning,
    draw_latents,
    finished_stage,
    pixels_to_hu,
    seeded_noise,
)
from namd.models.imageflownet import ALL_PARTS, ImageFlowNet, load_model
from namd.run.layout import RunDir

SOLVER = "euler_maruyama"


class ImageFlowNetSampler:
    """The whole ImageFlowNet of a run, its crop window and interval."""

    def __init__(self, model: ImageFlowNet, image_size: int, window: tuple[float, float],
                 interval: float = 1.0, device: torch.device | str = "cpu"):
        self.model, self.size, self.window = model, image_size, window
        self.interval, self.device = interval, device

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu") -> ImageFlowNetSampler:
        """Load cond_imageflownet (finished, trained under a config that agrees with `config`);
        a missing or damaged file is a RunFileError naming it."""
        cond_dir = finished_stage(run, dirs["cond"], config)
        model, spec = load_model(cond_dir, ALL_PARTS, device)
        if int(spec["image_size"]) != config.data.crop_size:
            raise ValueError(f"{cond_dir} was trained on {spec['image_size']} px crops, the run's "
                             f"are {config.data.crop_size} px")
        return cls(model, int(spec["image_size"]), tuple(config.data.window_hu),
                   float(spec.get("interval", 1.0)), device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(1, H, W): the follow-up crop in window units."""
        return 1, self.size, self.size

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> PixelConditioning:
        """The baselines in window units (the record is not used: image only)."""
        return PixelConditioning.of(keys, baselines_hu, self.window)

    def info(self) -> dict[str, Any]:
        """How it samples, for the sample stage's run_info.json."""
        return {"sampler": SOLVER, "interval": self.interval, "diffusion_scales": self.model.scales(),
                "noise": "per sample generator, one draw per Euler-Maruyama step"}

    @torch.inference_mode()
    def generate(self, cond: PixelConditioning, cfg: SamplingConfig,
                 show_progress: bool = True) -> torch.Tensor:
        """(N, K, 1, H, W) follow-ups in window units, K = cfg.k draws of the SDEs per nodule."""
        dtype = next(self.model.parameters()).dtype

        def run(_x: torch.Tensor, nodule: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
            unique, where = torch.unique(nodule, return_inverse=True)
            feats = self.model.encoder(cond.baseline[unique].to(self.device, dtype))
            feats = [f[where] for f in feats]  # each draw starts from its nodule's features
            moved = self.model.evolve(feats, cfg.steps, lambda _b, n: seeded_noise(gens, (n,)),
                                      self.interval)
            return self.model.decoder(moved)

        return draw_latents(cond.keys, cfg, self.latent_shape, dtype, self.device, run,
                            cfg.max_batch, show_progress)

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, 1, H, W) window units -> (M, H, W) crops in HU (clipped to the window)."""
        return pixels_to_hu(latents, self.window)
