"""Intensity mapping between Hounsfield units and the networks' [-1, 1] range, and the
rotation augmentation of Appendix B (45, 90, 135 and 180 degrees)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ROTATIONS = (0, 45, 90, 135, 180)  # paper: random rotations of 45, 90, 135, 180 (plus none)


def hu_to_unit(x: np.ndarray | torch.Tensor, window: tuple[float, float]):
    """Clip HU to the window and scale linearly to [-1, 1] (paper: grey values in [-1, 1])."""
    lo, hi = window
    clip = np.clip if isinstance(x, np.ndarray) else torch.clamp
    return (clip(x, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def unit_to_hu(x: np.ndarray | torch.Tensor, window: tuple[float, float]):
    """Inverse of `hu_to_unit` inside the window (values outside [-1, 1] are clipped)."""
    lo, hi = window
    clip = np.clip if isinstance(x, np.ndarray) else torch.clamp
    return (clip(x, -1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


def rotate(x: torch.Tensor, degrees: torch.Tensor | list[int]) -> torch.Tensor:
    """Rotate each image of a (B, C, H, W) batch by its angle (degrees, counter-clockwise).

    Multiples of 90 are exact (rot90); other angles use bilinear resampling with reflection
    at the corners, so no artificial border enters the crop.
    """
    angles = [int(a) % 360 for a in (degrees.tolist() if torch.is_tensor(degrees) else degrees)]
    out = x.clone()
    for i, angle in enumerate(angles):
        if angle % 90 == 0:
            out[i] = torch.rot90(x[i], k=angle // 90, dims=(-2, -1))
            continue
        rad = math.radians(angle)
        theta = torch.tensor([[math.cos(rad), -math.sin(rad), 0.0],
                              [math.sin(rad), math.cos(rad), 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta[None], list(x[i : i + 1].shape), align_corners=False)
        out[i] = F.grid_sample(x[i : i + 1], grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)[0]
    return out


def random_rotations(batch: int, generator: torch.Generator) -> torch.Tensor:
    """One angle per sample drawn uniformly from ROTATIONS with a given generator."""
    choice = torch.randint(len(ROTATIONS), (batch,), generator=generator)
    return torch.tensor(ROTATIONS)[choice]
