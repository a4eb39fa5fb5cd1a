"""The one nodule measurer: the same longest diameter as the per-crop measure it replaced, the
other measures of the same mask, the shapes and spacing it is given, and the no-nodule case."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label, regionprops

from namd.evaluation import measure as measure_module
from namd.evaluation.measure import measure

SP = 0.7


def _nodule(radius_y: float, radius_x: float, centre=(31.5, 31.5), size: int = 64,
            noise: float = 0.0, seed: int = 0, hu: float = 0.0) -> np.ndarray:
    """Lung background (-850 HU) with an elliptical nodule of `hu`."""
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - centre[0]) / radius_y) ** 2 + ((xx - centre[1]) / radius_x) ** 2 <= 1
    crop = np.where(inside, hu, -850.0)
    return crop + np.random.default_rng(seed).normal(scale=noise, size=crop.shape)


def diameter(crop: np.ndarray, spacing: float = SP) -> float:
    """The longest diameter of one crop."""
    return float(measure(crop, spacing).longest_mm)


# ---------------------------------------------------------------- the measure it replaced

def _old_component(mask: np.ndarray, search_px: int) -> np.ndarray | None:
    regions = label(mask, connectivity=1)
    yy, xx = np.nonzero(regions)
    if len(yy) == 0:
        return None
    cy, cx = (np.asarray(mask.shape) - 1) / 2.0
    dist = np.hypot(yy - cy, xx - cx)
    nearest = int(np.argmin(dist))
    if dist[nearest] > search_px:
        return None
    return regions == regions[yy[nearest], xx[nearest]]


def _old_detached(mask: np.ndarray, search_px: int) -> np.ndarray:
    depth = ndimage.distance_transform_edt(mask)
    h, w = mask.shape
    yy, xx = np.ogrid[:h, :w]
    near = mask & (np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0) <= search_px)
    radius = max(1, int(round(0.6 * float(depth[near].max())))) if near.any() else 1
    padded = np.pad(mask, 1)
    eroded = ndimage.distance_transform_edt(padded) > radius
    opened = (np.zeros(mask.shape, bool) if not eroded.any()
              else (ndimage.distance_transform_edt(~eroded) <= radius)[1:-1, 1:-1])
    core = _old_component(opened, search_px)
    return mask if core is None else core


def old_diameter_mm(crop: np.ndarray, spacing_mm: float) -> float:
    """quality.nodule_diameter_mm as it stood before issue 26 (per crop, regionprops)."""
    raw = np.asarray(crop, dtype=np.float64)
    smooth = ndimage.gaussian_filter(raw, 1.0)
    above = smooth > -650.0
    found = _old_component(above, 4)
    if found is None:
        return 0.0
    background = np.median(raw[~above]) if (~above).any() else -650.0
    core = _old_detached(found, 4)
    half = 0.5 * (np.median(raw[core]) + background)
    nodule = _old_component(smooth > half, 4)
    nodule = core if nodule is None else _old_detached(nodule, 4)
    region = regionprops(nodule.astype(np.uint8))[0]
    return float(max(region.axis_major_length, 1.0) * spacing_mm)


def scenes(n: int, seed: int) -> np.ndarray:
    """`n` varied crops (n, 64, 64): nodules of every size, solid and ground glass, off centre,
    with crossing and touching vessels, a chest wall, noise; and degenerate ones (no nodule,
    tissue everywhere, noise only, a nodule reaching the crop's edge)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    out = []
    for i in range(n):
        kind = i % 10
        if kind == 0:
            out.append(rng.normal(-850, 30, (64, 64)) if i % 20 else np.zeros((64, 64)))
            continue
        if kind == 1:
            out.append(rng.normal(-400, 350, (64, 64)))
            continue
        ry, rx = rng.uniform(1.5, 30.0 if kind == 2 else 14.0, 2)
        cy, cx = 31.5 + rng.uniform(-4, 4, 2)
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        hu = rng.choice([40.0, -550.0, -250.0])
        img = np.where((u / ry) ** 2 + (v / rx) ** 2 <= 1, hu, -860.0)
        for _ in range(rng.integers(0, 4)):  # vessels: lines of 1-3 px
            a, off, width = rng.uniform(0, np.pi), rng.uniform(-20, 20), rng.uniform(0.6, 1.8)
            line = np.abs((yy - 31.5) * np.cos(a) - (xx - 31.5) * np.sin(a) - off) <= width
            img = np.where(line, 30.0, img)
        if kind == 3:  # chest wall along one side
            img = np.where(yy > rng.uniform(44, 60), 50.0, img)
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.2))
        out.append(img + rng.normal(0, rng.uniform(5, 60), img.shape))
    return np.stack(out).astype(np.float32)


def test_longest_diameter_equals_the_per_crop_measure_it_replaced():
    """Same segmentation, same numbers: within 0.1 mm asked, round-off found (300 crops)."""
    crops = scenes(300, seed=3)
    spacing = np.linspace(0.5, 1.0, len(crops))
    new = measure(crops, spacing).longest_mm
    old = np.array([old_diameter_mm(c, s) for c, s in zip(crops, spacing, strict=True)])
    assert (old > 0).sum() > 200 and (old == 0).sum() > 10  # both branches exercised
    np.testing.assert_allclose(new, old, atol=1e-6)


def test_chunks_and_shapes_do_not_change_the_values(monkeypatch):
    crops = scenes(24, seed=5).reshape(6, 4, 64, 64)  # (N, K, H, W), one spacing per nodule
    spacing = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    whole = measure(crops, spacing)
    monkeypatch.setattr(measure_module, "CHUNK", 5)
    chunked = measure(crops, spacing)
    for field in ("longest_mm", "equivalent_mm", "density_hu", "solid_mm", "found"):
        assert getattr(whole, field).shape == (6, 4)
        np.testing.assert_array_equal(getattr(whole, field), getattr(chunked, field))
    single = measure(crops[2, 1], spacing[2])
    assert single.longest_mm.shape == ()
    assert float(single.longest_mm) == whole.longest_mm[2, 1]
    with pytest.raises(ValueError, match=r"need \(\.\.\., H, W\)"):
        measure(np.zeros(64), SP)


# ---------------------------------------------------------------- what it measures

@pytest.mark.parametrize("ry,rx", [(8, 8), (12, 6), (4, 4)])
def test_diameter_of_synthetic_nodules(ry, rx):
    expected = 2 * max(ry, rx) * SP
    assert diameter(_nodule(ry, rx)) == pytest.approx(expected, rel=0.1)
    assert diameter(_nodule(ry, rx, noise=40.0, seed=ry)) == pytest.approx(expected, rel=0.15)
    assert diameter(_nodule(ry, rx, centre=(34.5, 29.5))) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_diameter_ignores_attached_vessels(width):
    """A vessel crossing the nodule, or a thin one touching it, is not measured with it (the
    measure without the opening gave the vessel's length, about 45 mm here)."""
    crossing = _nodule(6, 6)
    crossing[31 - width // 2:31 - width // 2 + width, :] = 40.0
    assert diameter(crossing) == pytest.approx(12 * SP, rel=0.1)
    if width <= 2:  # thicker vessels merging with the nodule's side widen it (a known limit)
        touching = crossing.copy()
        touching[:, 39:39 + width] = 40.0
        assert diameter(touching) == pytest.approx(12 * SP, rel=0.15)


def test_equivalent_diameter_density_and_solid_part_of_the_same_mask():
    disc = measure(_nodule(8, 8, noise=20.0), SP)
    assert float(disc.equivalent_mm) == pytest.approx(16 * SP, rel=0.08)
    assert float(disc.density_hu) == pytest.approx(0.0, abs=60.0)  # the edge pixels pull it down
    assert float(disc.solid_mm) == pytest.approx(float(disc.equivalent_mm), rel=0.1)
    ellipse = measure(_nodule(12, 6), SP)  # a 24 x 12 px ellipse has the area of a disc
    assert float(ellipse.longest_mm) == pytest.approx(24 * SP, rel=0.1)  # of 2 sqrt(72) px
    assert float(ellipse.equivalent_mm) == pytest.approx(2 * np.sqrt(72) * SP, rel=0.1)
    part_solid = _nodule(9, 9, hu=-550.0)  # ground glass with a solid core of radius 4
    part_solid[_nodule(4, 4) > -100] = 20.0
    m = measure(part_solid, SP)
    assert float(m.equivalent_mm) == pytest.approx(18 * SP, rel=0.1)
    assert float(m.solid_mm) == pytest.approx(8 * SP, rel=0.2)
    assert -550.0 < float(m.density_hu) < -300.0
    ground_glass = measure(_nodule(9, 9, hu=-550.0, noise=20.0), SP)
    assert float(ground_glass.solid_mm) == 0.0 and ground_glass.found


def test_no_central_nodule_measures_zero_size_and_the_centre_density():
    lung = np.random.default_rng(0).normal(-850, 20, (64, 64))
    for crop in (lung, _nodule(3, 3, centre=(8, 8))):
        m = measure(crop, SP)
        assert not m.found
        assert float(m.longest_mm) == float(m.equivalent_mm) == float(m.solid_mm) == 0.0
        assert float(m.density_hu) == pytest.approx(-850.0, abs=15.0)
    crops = np.stack([_nodule(5, 5), _nodule(10, 10)])
    d = measure(np.stack([crops, crops], axis=1), np.array([0.7, 1.0])).longest_mm
    assert d.shape == (2, 2)
    np.testing.assert_allclose(d[:, 0], [7.0, 20.0], rtol=0.1)
