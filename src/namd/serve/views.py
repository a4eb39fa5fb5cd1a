"""What the page draws: a scan's axial slices (with the chosen centre marked), crops in the lung
window, the pixel-wise variance of the K follow-ups as a colour map, and the strip of K
probabilities; and the mapping from a click on a slice back to a voxel and a world point.

Slices are shown in the crop's orientation (columns towards the patient's left, rows towards
posterior), enlarged by a whole factor with nearest-neighbour pixels, so a click at display
pixel (x, y) is voxel ((x + 0.5) / f - 0.5, (y + 0.5) / f - 0.5) of that slice exactly. Grey
values come from `namd.cohort.imaging.hu_to_unit`, the windowing the networks see.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from namd.cohort.imaging import hu_to_unit
from namd.cohort.ingest.volume import Volume

SLICE_MIN_PX = 384  # slices smaller than this are enlarged (a 40-pixel phantom, a thumbnail)
CROP_PX = 192  # crops are shown at least this large
MARKER = (255, 64, 64)
GALLERY_COLUMNS, THUMB_PX = 6, 112  # the page's gallery: its rows grow with k


def to_grey(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 grey values of HU in a window (low -> 0, high -> 255)."""
    return np.round((hu_to_unit(np.asarray(hu, np.float64), window) + 1.0) * 127.5).astype(np.uint8)


def zoom_factor(shape: Sequence[int], minimum: int) -> int:
    """The whole enlargement that brings the smaller side to at least `minimum` pixels."""
    return max(1, math.ceil(minimum / max(1, min(shape))))


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor (each pixel becomes factor x factor)."""
    return image if factor == 1 else np.repeat(np.repeat(image, factor, 0), factor, 1)


def crop_image(hu: np.ndarray, window: tuple[float, float], minimum: int = CROP_PX) -> np.ndarray:
    """A crop as a uint8 grey image, enlarged for the page (the saved .npy keeps the HU)."""
    return enlarge(to_grey(hu, window), zoom_factor(hu.shape, minimum))


def variance_image(variance: np.ndarray, minimum: int = CROP_PX) -> np.ndarray:
    """Pixel-wise variance (HU^2) as an RGB 'magma' map from 0 to its maximum."""
    from matplotlib import colormaps

    top = float(variance.max()) or 1.0
    rgb = colormaps["magma"](np.clip(variance / top, 0.0, 1.0))[..., :3]
    return enlarge(np.round(rgb * 255).astype(np.uint8), zoom_factor(variance.shape, minimum))


def slice_hu(volume: Volume, k: int) -> np.ndarray:
    """Axial slice k of a volume as (rows, columns) float32 HU."""
    if not 0 <= k < volume.size[2]:
        raise ValueError(f"slice {k} outside the volume (0-{volume.size[2] - 1})")
    return sitk.GetArrayFromImage(volume.slice_image(int(k)))[0].astype(np.float32)


def slice_view(volume: Volume, k: int, window: tuple[float, float],
               marker: tuple[float, float] | None = None) -> tuple[np.ndarray, int]:
    """Slice k as an RGB image with a cross at continuous voxel `marker` (column, row), and
    the enlargement factor used (see click_to_voxel)."""
    grey = to_grey(slice_hu(volume, k), window)
    factor = zoom_factor(grey.shape, SLICE_MIN_PX)
    rgb = np.repeat(enlarge(grey, factor)[..., None], 3, axis=2)
    if marker is not None:
        _draw_cross(rgb, (marker[0] + 0.5) * factor - 0.5, (marker[1] + 0.5) * factor - 0.5)
    return rgb, factor


def _draw_cross(rgb: np.ndarray, x: float, y: float, arm: int = 12, gap: int = 4) -> None:
    """Draw an open cross centred on display pixel (x, y), leaving the centre itself visible."""
    h, w = rgb.shape[:2]
    cx, cy = int(round(x)), int(round(y))
    for d in range(gap, arm + 1):
        for px, py in ((cx - d, cy), (cx + d, cy), (cx, cy - d), (cx, cy + d)):
            if 0 <= px < w and 0 <= py < h:
                rgb[py, px] = MARKER


def click_to_voxel(x: float, y: float, k: int, factor: int) -> np.ndarray:
    """Continuous voxel index (column, row, slice) of display pixel (x, y) on slice k."""
    return np.array([(x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5, float(k)])


def world_of(volume: Volume, voxel: np.ndarray) -> np.ndarray:
    """World point (LPS mm) of a continuous index into the slices as shown."""
    return volume.to_world(np.asarray(voxel, float))


def stored_voxel(volume: Volume, world: np.ndarray) -> np.ndarray:
    """The voxel index, in the file's own storage order (what `namd predict --voxel` and
    crop_nodule(space='voxel') take), of a world point: the inverse of volume.voxel_to_world,
    which is affine."""
    origin = volume.voxel_to_world(np.zeros(3))
    matrix = np.column_stack([volume.voxel_to_world(np.eye(3)[i]) - origin for i in range(3)])
    return np.linalg.solve(matrix, np.asarray(world, float) - origin)


def shown_index(volume: Volume, world: np.ndarray) -> np.ndarray:
    """Continuous index (column, row, slice) into the slices as shown of a world point."""
    return volume.to_index(np.asarray(world, float))


def probability_strip(p_followup: Sequence[float], p_baseline: float) -> bytes:
    """PNG of the K follow-up probabilities as dots on [0, 1], with their mean +- std and the
    baseline's probability marked: how much the K possible futures disagree."""
    from matplotlib.figure import Figure

    p = np.asarray(p_followup, float)
    fig = Figure(figsize=(6.0, 1.3), dpi=110)
    ax = fig.add_axes((0.04, 0.36, 0.92, 0.36))
    mean, std = float(p.mean()), float(p.std())
    ax.axvspan(max(0.0, mean - std), min(1.0, mean + std), color="tab:orange", alpha=0.2, lw=0,
               label="mean ± std")
    ax.axvline(mean, color="tab:orange", lw=1.5)
    ax.scatter(p, np.zeros_like(p), s=22, color="tab:orange", edgecolor="black", lw=0.4, zorder=3,
               label=f"the {len(p)} follow-ups")
    ax.axvline(p_baseline, color="tab:blue", lw=1.5, ls="--", label="baseline")
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("malignancy probability", fontsize=7, labelpad=1)
    fig.legend(fontsize=6.5, loc="upper center", ncol=3, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 grey or RGB image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    """The RGB array of PNG bytes (what the page's image widgets take)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
