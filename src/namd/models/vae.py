"""The KL autoencoder of the nodule-aligned latent space (paper 3.2): a diffusers AutoencoderKL
built from the typed config, plus the conventions every later stage shares for moving crops in
and out of the latent space.

Conventions: crops in HU -> lung window -> [-1, 1] (namd.imaging.hu_to_unit), replicated to
`in_channels`; latents are the posterior mean (deterministic, so cached latents are stable),
multiplied by the stage's saved scale factor before diffusion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from namd.config import VAEConfig
from namd.imaging import hu_to_unit, unit_to_hu
from namd.runinfo import atomic_write_json

SCALE_FILE = "latent_scale.json"
MODEL_DIR = "autoencoder"


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL of the configured size (spatial factor 2^(levels-1))."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
    )


def latent_shape(cfg: VAEConfig, crop_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latent of one crop: 64 x 64 -> 4 x 8 x 8 for the SD1.5 layout."""
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    return cfg.latent_channels, crop_size // factor, crop_size // factor


def to_network(hu: np.ndarray | torch.Tensor, window: tuple[float, float], channels: int) -> torch.Tensor:
    """HU crops (B, H, W) -> network input (B, channels, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(hu) if not torch.is_tensor(hu) else hu, dtype=torch.float32)
    x = hu_to_unit(x, window)
    return x.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()


def from_network(x: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Network output (B, C, H, W) in [-1, 1] -> HU crops (B, H, W) (channel mean)."""
    return unit_to_hu(x.float().mean(1), window)


@torch.no_grad()
def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean latents (unscaled) of network-range images."""
    return vae.encode(x).latent_dist.mean


@torch.no_grad()
def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from unscaled latents."""
    return vae.decode(z).sample


def save_trained_vae(vae: AutoencoderKL, out: Path, scale_factor: float, **extra) -> None:
    """Write the autoencoder (diffusers folder, safetensors) and its latent scale factor."""
    vae.save_pretrained(Path(out) / MODEL_DIR, safe_serialization=True)
    atomic_write_json(Path(out) / SCALE_FILE, {"scale_factor": float(scale_factor), **extra})


def load_trained_vae(stage_dir: Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, float]:
    """The frozen VAE of a finished `namd train vae` stage and its scale factor (1 / latent std).

    The diffusion stages read the scale factor from here: nothing is copied by hand.
    """
    stage_dir = Path(stage_dir)
    scale_path, model_path = stage_dir / SCALE_FILE, stage_dir / MODEL_DIR
    for p in (scale_path, model_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {stage_dir} a finished `namd train vae` stage?")
    vae = AutoencoderKL.from_pretrained(model_path, local_files_only=True, use_safetensors=True)
    vae.to(device).eval().requires_grad_(False)
    return vae, float(json.loads(scale_path.read_text())["scale_factor"])
