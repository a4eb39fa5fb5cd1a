"""The one nodule measurer: segment the nodule at a crop's centre once and read off what every
reader needs (Table 1's diameter error, the growth section, the known-futures score, later the
Lung-RADS readout).

Segmentation (where the paper is silent; HU from docs/reference-facts.md, section 4): the crop
is smoothed, thresholded to find the connected component at the centre, whose edge is then set
at half its contrast to the lung; attached vessels are cut off by an opening scaled to the
nodule's own thickness. From that one mask:

- `longest_mm`: the major axis of its equal-moment ellipse (the longest diameter, as radiology
  and the cohort's SCT_LONG_DIA report it; at least one pixel);
- `equivalent_mm`: the diameter 2 sqrt(A / pi) of the disc of its area A;
- `density_hu`: the mean HU of the crop inside it;
- `solid_mm`: the equivalent diameter of its pixels above -300 HU (after the same smoothing),
  the solid part of a part-solid nodule, for the Lung-RADS readout;
- `short_mm`: the minor axis of the same ellipse (the short axis Lung-RADS averages with the long
  one: `mean_mm` = (long + short) / 2, namd.clinical.lungrads rounds it to 0.1 mm);
- `cut_by_border`: the mask reaches the crop's edge, so the nodule may go on outside the crop
  and its size is a lower bound (not measurable, as no nodule at the centre is: `measurable`,
  `not_measurable_reason`);
- `volume_mm3`: an approximate volume, the ellipsoid of the long and short axes whose third
  (depth) axis equals the short one, pi / 6 x long x short^2: a 2D crop does not see depth.

These last three are new with the readout (issue 31) and change none of the others' values.

A crop with no tissue above the threshold within `DIAMETER_SEARCH_PX` of its centre has no
visible nodule: its sizes are 0 and its density is the mean HU within that radius of the centre
(what lies where the nodule should be, about -850 HU for lung), so a generator that erases the
nodule is far from one that draws it, and no value is NaN. The readout (namd.clinical) reads
such a crop as not measurable, never as a size of 0.

Speed: the steps that touch whole crops (smoothing, thresholds, labelling, the choice of the
central component) run on a chunk of crops at once; the per-crop steps (the opening's distance
transforms, the medians) run on the bounding box of the component, not the whole crop: the
opening of a component and the distances inside it depend only on its box plus a one-pixel
border of background (the crop's outside counts as background, as before). Same values as the
per-crop version that stood in quality.py before (tests/evaluation/test_measure.py), about
3.5x faster (benchmarks/bench_measure.py, results/measure.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from namd.run.provenance import progress

DIAMETER_THRESHOLD_HU = -650.0  # lung about -900..-850, ground glass -750..-300 (after smoothing)
DIAMETER_SMOOTH_PX = 1.0  # a 1-pixel Gaussian lowers LDCT noise of 20-60 HU
DIAMETER_SEARCH_PX = 4  # the component may miss the exact centre by this many pixels
SOLID_THRESHOLD_HU = -300.0  # ground glass ends, solid tissue begins (reference-facts, section 4)
NO_NODULE, CUT_BY_BORDER = "no nodule at the centre", "nodule cut by the crop's border"
CHUNK = 256  # crops per vectorised step: a few float64 copies of 256 x 64 x 64 stay ~10 MB each

KEYS = ("longest", "equivalent", "density", "solid", "found", "short", "border")
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as skimage's connectivity=1
_PLANAR = np.stack([np.zeros_like(_CROSS), _CROSS, np.zeros_like(_CROSS)])  # never across crops


@dataclass(frozen=True)
class Measurements:
    """Per-crop measures, each shaped like the crops without their last two axes."""

    longest_mm: np.ndarray  # major axis of the equal-moment ellipse (0: no nodule)
    equivalent_mm: np.ndarray  # 2 sqrt(area / pi) of the same mask
    density_hu: np.ndarray  # mean HU inside the mask (no nodule: mean HU near the centre)
    solid_mm: np.ndarray  # equivalent diameter of the mask's part above SOLID_THRESHOLD_HU
    found: np.ndarray  # bool: a nodule was found at the centre
    short_mm: np.ndarray  # minor axis of the same ellipse (0: no nodule)
    cut_by_border: np.ndarray  # bool: the nodule's mask reaches the crop's edge

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Measurements:
        """Every measure transformed alike (e.g. np.ravel), the fields kept in step."""
        return Measurements(*(fn(np.asarray(getattr(self, f))) for f in self.__dataclass_fields__))

    def take(self, key: Any) -> Measurements:
        """Every measure indexed by `key` along the leading axes: take(i) is crop i of (N,)
        measures, take((slice(None), k)) sample k of every nodule of (N, K) ones."""
        return self.map(lambda a: a[key])

    @property
    def mean_mm(self) -> np.ndarray:
        """(long + short) / 2, unrounded: the mean diameter Lung-RADS reads (0: no nodule)."""
        return 0.5 * (self.longest_mm + self.short_mm)

    @property
    def volume_mm3(self) -> np.ndarray:
        """pi / 6 x long x short^2: the ellipsoid whose unseen depth axis equals the short axis
        (an assumption: one 2D crop shows no depth); 0 without a nodule."""
        return np.pi / 6.0 * self.longest_mm * self.short_mm ** 2

    @property
    def measurable(self) -> np.ndarray:
        """bool: a nodule at the centre that the crop's edge does not cut."""
        return self.found & ~self.cut_by_border

    def not_measurable_reason(self) -> np.ndarray:
        """Per crop '' (measurable), 'no nodule at the centre' or 'nodule cut by the crop's
        border': why a size is not read (never a size of 0)."""
        return np.where(~self.found, NO_NODULE, np.where(self.cut_by_border, CUT_BY_BORDER, ""))


@dataclass
class _Blob:
    """A mask in crop coordinates, stored as its bounding box: rows y0.., columns x0.."""

    y0: int
    x0: int
    mask: np.ndarray  # bool (h, w) inside the box


def measure(crops: np.ndarray, spacing_mm: np.ndarray | float) -> Measurements:
    """Measure the nodule at the centre of crops (..., H, W) in HU; one pixel spacing (mm) per
    nodule, i.e. per index of the first axis, or one for all."""
    crops = np.asarray(crops)
    if crops.ndim < 2:
        raise ValueError(f"measure: crops of shape {crops.shape} need (..., H, W)")
    lead, (h, w) = crops.shape[:-2], crops.shape[-2:]
    flat = crops.reshape(-1, h, w)
    per_nodule = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), lead[:1])
    spacing = np.repeat(per_nodule, int(np.prod(lead[1:], dtype=int))) if lead else per_nodule
    spacing = np.broadcast_to(spacing, len(flat))
    parts = [_measure_chunk(flat[i:i + CHUNK].astype(np.float64)) for i in range(0, len(flat), CHUNK)]
    px = {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0) for key in KEYS}
    return Measurements(
        longest_mm=(px["longest"] * spacing).reshape(lead),
        equivalent_mm=(px["equivalent"] * spacing).reshape(lead),
        density_hu=px["density"].reshape(lead),
        solid_mm=(px["solid"] * spacing).reshape(lead),
        found=px["found"].astype(bool).reshape(lead),
        short_mm=(px["short"] * spacing).reshape(lead),
        cut_by_border=px["border"].astype(bool).reshape(lead))


def measure_rows(rows: Mapping[str, np.ndarray], spacing_mm: np.ndarray) -> dict[str, Measurements]:
    """`measure` of every row's crops (N, K, H, W), with a progress bar (one row per step)."""
    return {name: measure(crops, spacing_mm)
            for name, crops in progress(rows.items(), desc="measure nodules", unit="row")}


def _measure_chunk(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel-unit measures of a chunk of crops (B, H, W) float64 HU."""
    smooth = ndimage.gaussian_filter(raw, (0.0, DIAMETER_SMOOTH_PX, DIAMETER_SMOOTH_PX))
    above = smooth > DIAMETER_THRESHOLD_HU
    found = _central_blobs(above)
    b = len(raw)
    half = np.full(b, np.inf)  # no nodule: nothing above the second threshold either
    cores: list[_Blob | None] = [None] * b
    for i, blob in enumerate(found):
        if blob is None:
            continue
        lung = raw[i][~above[i]]
        background = np.median(lung) if lung.size else DIAMETER_THRESHOLD_HU
        cores[i] = _detached(blob, raw.shape[1:])
        half[i] = 0.5 * (np.median(_values(raw[i], cores[i])) + background)
    edges = _central_blobs(smooth > half[:, None, None])
    out = {key: np.zeros(b) for key in KEYS}
    out["density"] = _centre_mean(raw)
    for i, core in enumerate(cores):
        if core is None:
            continue
        nodule = core if edges[i] is None else _detached(edges[i], raw.shape[1:])
        major, minor = _axes(nodule.mask)
        out["longest"][i] = max(major, 1.0)
        out["short"][i] = min(max(minor, 1.0), out["longest"][i])
        out["border"][i] = float(_touches_edge(nodule, raw.shape[1:]))
        out["equivalent"][i] = _equivalent(int(nodule.mask.sum()))
        out["density"][i] = float(_values(raw[i], nodule).mean())
        out["solid"][i] = _equivalent(int((_values(smooth[i], nodule) > SOLID_THRESHOLD_HU).sum()))
        out["found"][i] = 1.0
    return out


def _values(image: np.ndarray, blob: _Blob) -> np.ndarray:
    """The pixels of `image` (H, W) under the blob."""
    h, w = blob.mask.shape
    return image[blob.y0:blob.y0 + h, blob.x0:blob.x0 + w][blob.mask]


def _equivalent(area_px: int) -> float:
    """Diameter (px) of the disc of `area_px` pixels."""
    return 2.0 * float(np.sqrt(area_px / np.pi))


def _centre_mean(raw: np.ndarray) -> np.ndarray:
    """Mean HU within DIAMETER_SEARCH_PX of each crop's centre (B,): the density of a crop
    without a nodule."""
    return raw[:, _grids(raw.shape[1:])[0] <= DIAMETER_SEARCH_PX].mean(axis=1)


@functools.lru_cache(maxsize=8)
def _grids(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For a crop shape: every pixel's distance from the centre (as the nearest-pixel search
    has it) and from the crop's outside (the nearest pixel beyond its edge)."""
    yy, xx = np.indices(shape)
    cy, cx = (np.asarray(shape) - 1) / 2.0
    outside = np.minimum.reduce([yy + 1, xx + 1, shape[0] - yy, shape[1] - xx])
    return np.hypot(yy - cy, xx - cx), outside


def _central_blobs(masks: np.ndarray) -> list[_Blob | None]:
    """Per crop (B, H, W) the 4-connected component holding the mask pixel nearest the centre,
    when one lies within DIAMETER_SEARCH_PX of it; None otherwise. One labelling of the chunk;
    ties between equally near pixels go to the first in row-major order, as np.nonzero's."""
    labels, _ = ndimage.label(masks, structure=_PLANAR)
    dist = _grids(masks.shape[1:])[0]
    window = np.flatnonzero(dist.ravel() <= DIAMETER_SEARCH_PX)  # row-major order
    cand = labels.reshape(len(masks), -1)[:, window]
    nearest = np.where(cand > 0, dist.ravel()[window], np.inf).argmin(axis=1)
    ids = cand[np.arange(len(masks)), nearest]
    return [None if ident == 0 else _boxed(labels[i] == ident) for i, ident in enumerate(ids)]


def _boxed(mask: np.ndarray) -> _Blob:
    """A non-empty mask (H, W) as a blob cut to its bounding box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return _Blob(int(y0), int(x0), mask[y0:y1, x0:x1])


def _central_component(blob: _Blob, shape: tuple[int, ...]) -> _Blob | None:
    """The 4-connected component of a blob's mask nearest the crop centre, within
    DIAMETER_SEARCH_PX of it, or None (the per-crop form of `_central_blobs`)."""
    regions, _ = ndimage.label(blob.mask, structure=_CROSS)
    yy, xx = np.nonzero(regions)
    if len(yy) == 0:
        return None
    cy, cx = (np.asarray(shape) - 1) / 2.0
    dist = np.hypot(yy + blob.y0 - cy, xx + blob.x0 - cx)
    nearest = int(np.argmin(dist))
    if dist[nearest] > DIAMETER_SEARCH_PX:
        return None
    return _Blob(blob.y0, blob.x0, regions == regions[yy[nearest], xx[nearest]])


def _detached(blob: _Blob, shape: tuple[int, ...]) -> _Blob:
    """The central component of a blob without thin attached structures (vessels, fissures).

    A morphological opening with a disc of 0.6 x the nodule's inscribed radius (at least one
    pixel) cuts what is narrower than the nodule itself; the component at the centre is kept.
    Without it a nodule touching a vessel was measured along the vessel tree (demo cohort, 400
    pairs: 45% of baselines off their recorded diameter by more than 5 mm before, 5% after;
    `python benchmarks/check_diameter.py`, results/diameter*.md).

    The blob is one component, so everything outside its box is background: one distance
    transform of the box with a one-pixel background border gives both the erosion (distances
    to the background or the crop's outside) and the inscribed radius. The radius counts only
    the background, as it always did: where the crop's outside is as near as the background
    (a nodule filling the crop) it is recomputed on the whole crop.
    """
    h, w = blob.mask.shape
    framed = np.zeros((h + 2, w + 2), dtype=bool)
    framed[1:-1, 1:-1] = blob.mask
    dist = ndimage.distance_transform_edt(framed)
    centre, outside = (g[blob.y0:blob.y0 + h, blob.x0:blob.x0 + w] for g in _grids(shape))
    near = blob.mask & (centre <= DIAMETER_SEARCH_PX)
    radius = 1
    if near.any():
        depth = dist[1:-1, 1:-1][near]
        if (depth >= outside[near]).any():  # the crop's edge is as near as the background
            depth = _whole_crop_depth(blob, shape)[near]
        radius = max(1, int(round(0.6 * float(depth.max()))))
    opened = _opening_of_distance(dist, radius)[1:-1, 1:-1]
    core = _central_component(_Blob(blob.y0, blob.x0, opened), shape) if opened.any() else None
    return blob if core is None else core


def _whole_crop_depth(blob: _Blob, shape: tuple[int, ...]) -> np.ndarray:
    """Distance to the nearest background pixel of the whole crop (outside not background),
    inside the blob's box: the inscribed radius where the crop's edge is near."""
    full = np.zeros(shape, dtype=bool)
    h, w = blob.mask.shape
    full[blob.y0:blob.y0 + h, blob.x0:blob.x0 + w] = blob.mask
    return ndimage.distance_transform_edt(full)[blob.y0:blob.y0 + h, blob.x0:blob.x0 + w]


def _opening_of_distance(dist: np.ndarray, radius: int) -> np.ndarray:
    """Opening by the disc hypot(dy, dx) <= radius, from the mask's distance transform
    (background and outside at 0): erosion keeps pixels farther than `radius` from the
    background, dilation the pixels within `radius` of a kept one."""
    eroded = dist > radius
    if not eroded.any():
        return np.zeros(dist.shape, dtype=bool)
    return ndimage.distance_transform_edt(~eroded) <= radius


def disc_opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening of `mask` by the disc hypot(dy, dx) <= `radius`, outside the crop False.

    Equal to `ndimage.binary_opening(mask, structure=disc)` (tested) but in time independent of
    the radius: erosion keeps the pixels farther than `radius` from any False pixel, dilation
    the pixels within `radius` of a kept one, both by Euclidean distance transforms. The
    structuring-element version costs H W radius^2: a crop whose tissue fills it (all 0 HU
    samples) gave radius ~27 and 0.3 s per 64 x 64 crop, which made `namd evaluate` hang.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)  # the crop's outside is background
    return _opening_of_distance(ndimage.distance_transform_edt(padded), radius)[1:-1, 1:-1]


def _axes(mask: np.ndarray) -> tuple[float, float]:
    """Major and minor axis (px) of the equal-moment ellipse of a mask: 4 sqrt of the larger
    and smaller eigenvalue of its pixels' coordinate covariance (skimage's regionprops
    axis_major_length / axis_minor_length)."""
    yy, xx = np.nonzero(mask)
    dy, dx = yy - yy.mean(), xx - xx.mean()
    a, c, b = (dy * dy).mean(), (dx * dx).mean(), (dy * dx).mean()
    root = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    l1, l2 = 0.5 * (a + c) + root, 0.5 * (a + c) - root
    return 4.0 * float(np.sqrt(max(l1, 0.0))), 4.0 * float(np.sqrt(max(l2, 0.0)))


def _touches_edge(blob: _Blob, shape: tuple[int, ...]) -> bool:
    """Whether a blob's mask (its box may be wider than the mask) reaches the crop's first or
    last row or column."""
    rows, cols = np.flatnonzero(blob.mask.any(axis=1)), np.flatnonzero(blob.mask.any(axis=0))
    return bool(blob.y0 + rows[0] == 0 or blob.x0 + cols[0] == 0
                or blob.y0 + rows[-1] == shape[0] - 1 or blob.x0 + cols[-1] == shape[1] - 1)
