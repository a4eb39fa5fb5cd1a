"""Intensity mapping between Hounsfield units and the networks' [-1, 1] range, the check
that a crop holds plausible HU (shared by ingestion and `predict`), and the rotation
augmentation of Appendix B (45, 90, 135 and 180 degrees).

torch is imported inside the functions that need it, so that `namd prepare` and its worker
processes, which only check crops, do not load it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

ROTATIONS = (0, 45, 90, 135, 180)  # paper: random rotations of 45, 90, 135, 180 (plus none)
HU_RANGE = (-2000.0, 4000.0)  # values a CT crop in HU can plausibly hold (air -1000, bone < 3000)


def dtype_problem(values: np.ndarray) -> str | None:
    """Why an array's dtype cannot hold image values, or None: only real numbers (integers and
    floats) can. Complex values would be cast to their real part, booleans to 0 and 1, and an
    object array may hold anything, so each is refused by name instead of read silently."""
    dtype = np.asarray(values).dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):  # bool is neither
        return f"crop has dtype {dtype}: expected real numbers (integers or floats)"
    return None


def hu_problem(values: np.ndarray) -> str | None:
    """Why `values` cannot be CT values in HU (not real numbers, not finite, or outside
    HU_RANGE), or None when they can: garbage pixels (e.g. +-32,000) must stop ingestion and
    prediction."""
    values = np.asarray(values)
    problem = dtype_problem(values)
    if problem:
        return problem
    if not np.isfinite(values).all():
        return "crop must hold finite numbers (HU)"
    lo, hi = HU_RANGE
    if values.min() < lo or values.max() > hi:
        return f"values {values.min():.0f}..{values.max():.0f} do not look like HU"
    return None


def check_crop(crop: np.ndarray, size: int, source: str) -> np.ndarray:
    """A baseline crop as float32 HU of the run's crop size, or a one-line error naming `source`."""
    crop = np.asarray(crop)
    if crop.shape != (size, size):
        raise ValueError(f"{source}: crop has shape {crop.shape}, the run expects ({size}, {size}) "
                         "HU at data.pixel_spacing_mm (cut one with --image and --center)")
    problem = hu_problem(crop)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return crop.astype(np.float32)


def hu_to_unit(x: np.ndarray | torch.Tensor, window: tuple[float, float]):
    """Clip HU to the window and scale linearly to [-1, 1] (paper: grey values in [-1, 1])."""
    lo, hi = window
    clip = np.clip if isinstance(x, np.ndarray) else _torch().clamp
    return (clip(x, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def unit_to_hu(x: np.ndarray | torch.Tensor, window: tuple[float, float]):
    """Inverse of `hu_to_unit` inside the window (values outside [-1, 1] are clipped)."""
    lo, hi = window
    clip = np.clip if isinstance(x, np.ndarray) else _torch().clamp
    return (clip(x, -1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


def grey_to_hu(grey: np.ndarray, window: tuple[float, float], top: float = 255.0) -> np.ndarray:
    """Windowed grey values (0 -> window low, `top` -> window high) back to HU: the only
    reading a `windowed_uint8` crop allows (the authors' JPEG format; top 1 for an image
    scaled to 0..1)."""
    lo, hi = window
    return lo + np.asarray(grey, dtype=np.float64) / top * (hi - lo)


def rotate(x: torch.Tensor, degrees: torch.Tensor | list[int]) -> torch.Tensor:
    """Rotate each image of a (B, C, H, W) batch by its angle (degrees, counter-clockwise).

    Multiples of 90 are exact (rot90); other angles use bilinear resampling with reflection
    at the corners, so no artificial border enters the crop.
    """
    import torch
    import torch.nn.functional as F

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
    import torch

    choice = torch.randint(len(ROTATIONS), (batch,), generator=generator)
    return torch.tensor(ROTATIONS)[choice]


def _torch():
    """The torch module, imported on first use (see the module docstring)."""
    import torch

    return torch
