"""McWGAN's trained predictor, ready to give follow-ups (the table's `sampler` of mcwgan):
RUN/cond_mcwgan's predictor.json and predictor.safetensors.

Deterministic: one prediction per nodule, the predictor applied to the baseline crop in [-1, 1]
window units (namd.cohort.imaging.hu_to_unit), no randomness at all. The sample stage asks a
deterministic method (Method.stochastic False) for K = 1; any K gives K identical copies (each
nodule is predicted once and repeated: with nothing random to draw, draw_latents is not
needed). A prediction depends only on its own baseline, never on the seed, the batch or the
nodules beside it (GroupNorm, no batch statistics). `decode` maps back to HU with unit_to_hu
under the run's window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from namd.config import NamdConfig, SamplingConfig
from namd.inference.sampler import PixelConditioning, finished_stage, pixels_to_hu
from namd.models.mcwgan import PREDICTOR, Predictor, load_predictor
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import progress


class McWGANSampler:
    """The predictor, its crop size and HU window."""

    def __init__(self, predictor: Predictor, crop_size: int, window: tuple[float, float],
                 device: torch.device | str = "cpu"):
        self.predictor, self.crop_size, self.window, self.device = predictor, crop_size, window, device

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu") -> McWGANSampler:
        """Load RUN/cond_mcwgan (finished, trained under a config that agrees with this one);
        a missing or damaged file is a RunFileError naming it."""
        cond_dir = finished_stage(run, dirs["cond"], config)
        predictor, spec = load_predictor(cond_dir, device)
        window = tuple(float(v) for v in spec["window_hu"])
        if window != tuple(float(v) for v in config.data.window_hu):
            raise RunFileError(cond_dir / f"{PREDICTOR}.json", f"window_hu {list(window)} differs "
                               f"from the run's data.window_hu {list(config.data.window_hu)}")
        return cls(predictor, int(spec["crop_size"]), window, device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(1, H, W): a follow-up crop in window units."""
        return (1, self.crop_size, self.crop_size)

    def info(self) -> dict[str, Any]:
        """How it samples, for the sample stage's run_info.json."""
        return {"sampler": "deterministic predictor", "stochastic": False,
                "space": "pixels, HU window mapped to [-1, 1]"}

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> PixelConditioning:
        """The baselines in window units (image only: the records are not used)."""
        return PixelConditioning.of(keys, baselines_hu, self.window)

    @torch.inference_mode()
    def generate(self, cond: PixelConditioning, cfg: SamplingConfig,
                 show_progress: bool = True) -> torch.Tensor:
        """(N, K, 1, H, W): each nodule's one prediction (cfg.max_batch nodules per call),
        repeated for every k: K costs nothing, and no seed enters."""
        dtype = next(self.predictor.parameters()).dtype
        out = torch.empty((len(cond), cfg.k, *self.latent_shape), dtype=torch.float32)
        chunks = range(0, len(cond), cfg.max_batch)
        for s in progress(chunks, desc="predict", unit="batch", disable=None if show_progress else True):
            base = cond.baseline[s:s + cfg.max_batch].to(self.device, dtype)
            out[s:s + cfg.max_batch] = self.predictor(base).float().cpu()[:, None]
        return out

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, 1, H, W) window units -> (M, H, W) float32 HU (clipped to the window)."""
        return pixels_to_hu(latents, self.window)
