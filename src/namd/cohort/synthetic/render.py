"""Hounsfield-unit crops of synthetic nodules at a physical pixel spacing.

A *scene* is the anatomy around one nodule (parenchyma texture, vessels, sometimes pleura,
chest wall and a rib), drawn once and shared by both time points; a *shape* is the nodule's
persistent appearance (orientation, lobulation, spicules, texture). Each time point samples
the scene with its own small rigid misregistration, draws the nodule in its state at that
time, blurs with a point-spread function and adds fresh correlated low-dose noise.
Intensities follow docs/reference-facts.md, section 4 (approximate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

# --- intensities, HU (reference section 4) ------------------------------------------------
LUNG_HU = (-890.0, -850.0)
EMPHYSEMA_LUNG_HU = (-930.0, -900.0)
EMPHYSEMA_HOLE_HU = -985.0
VESSEL_HU = (30.0, 50.0)
SOLID_HU = (0.0, 50.0)
GGO_HU = (-650.0, -550.0)  # typical ground glass -600
SPICULE_HU = -50.0
PLEURA_HU, FAT_HU, MUSCLE_HU = 20.0, -100.0, 45.0
RIB_CORTEX_HU, RIB_MARROW_HU = 700.0, 250.0
NOISE_SD_HU = (20.0, 50.0)  # low-dose CT noise in lung
HU_CLIP = (-1024.0, 3071.0)
# --- geometry, mm ---------------------------------------------------------------------------
PSF_SIGMA_MM = 0.45  # in-plane blur of a standard kernel
NOISE_CORR_MM = 0.45  # correlation length of reconstructed noise
MISREG_ROT_DEG = 2.0  # slight misregistration between time points
MISREG_SHIFT_MM = 0.5
PAD_MM = 6.0  # scene margin around the crop, room for misregistration
P_CHEST_WALL = 0.3
P_RIB = 0.5
LOBULATION_MAX_ORDER = 4  # contour harmonics 2..4 are lobulation, higher ones raggedness


@dataclass
class Scene:
    """Noise-free anatomy around one nodule (HU, canvas larger than the crop)."""

    canvas: np.ndarray
    lung_hu: float
    noise_sd: float
    chest_wall: bool


@dataclass
class Shape:
    """The nodule's appearance that persists between time points."""

    angle: float
    ks: np.ndarray
    amps: np.ndarray
    phases: np.ndarray
    edge_mm: float
    solid_hu: float
    ggo_hu: float
    core_offset: np.ndarray
    texture: np.ndarray
    spicule_angles: np.ndarray
    spicule_len: np.ndarray  # in units of the longest diameter
    spicule_width_mm: np.ndarray


@dataclass
class State:
    """The nodule at one time point."""

    long_mm: float
    perp_mm: float
    attenuation: int
    core_fraction: float
    density_shift: float = 0.0
    lobulation: float = 1.0
    spicule_scale: float = 1.0


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column pixel coordinates centred on the middle of an n x n image."""
    c = (n - 1) / 2.0
    r, q = np.mgrid[0:n, 0:n].astype(np.float32)
    return r - c, q - c


def _smooth(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
    """A smooth random field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma_px)
    return field / (field.std() + 1e-6)


def _segment(rr, cc, p0, p1, w0: float, w1: float) -> np.ndarray:
    """Anti-aliased occupancy (0..1) of a tube from p0 to p1 (row, col) tapering from
    half-width w0 to w1 pixels."""
    dr, dc = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dr * dr + dc * dc + 1e-9
    t = np.clip(((rr - p0[0]) * dr + (cc - p0[1]) * dc) / length2, 0.0, 1.0)
    dist = np.hypot(rr - (p0[0] + t * dr), cc - (p0[1] + t * dc))
    return np.clip(w0 + (w1 - w0) * t - dist + 0.5, 0.0, 1.0)


def _draw_segment(occ: np.ndarray, p0, p1, w0: float, w1: float) -> None:
    """Max-combine a tube into `occ`, computing only inside its bounding box (speed)."""
    n_r, n_c = occ.shape
    c_r, c_c = (n_r - 1) / 2.0, (n_c - 1) / 2.0
    reach = max(w0, w1) + 1.5
    r0 = max(0, int(math.floor(min(p0[0], p1[0]) - reach + c_r)))
    r1 = min(n_r, int(math.ceil(max(p0[0], p1[0]) + reach + c_r)) + 1)
    c0 = max(0, int(math.floor(min(p0[1], p1[1]) - reach + c_c)))
    c1 = min(n_c, int(math.ceil(max(p0[1], p1[1]) + reach + c_c)) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rr = np.arange(r0, r1, dtype=np.float32)[:, None] - c_r
    cc = np.arange(c0, c1, dtype=np.float32)[None, :] - c_c
    box = occ[r0:r1, c0:c1]
    np.maximum(box, _segment(rr, cc, p0, p1, w0, w1), out=box)


def _vessel_tree(rng, n: int, sp: float, occ: np.ndarray, depth: int = 0,
                 start=None, heading=None, radius_mm=None) -> None:
    """Draw a wandering, tapering vessel with an occasional branch into `occ` (max-combined)."""
    if start is None:
        ang = rng.uniform(0, 2 * math.pi)
        start = np.array([math.sin(ang), math.cos(ang)]) * n * 0.6
        target = rng.uniform(-0.3, 0.3, 2) * n
        heading = math.atan2(target[0] - start[0], target[1] - start[1])
        radius_mm = rng.uniform(0.45, 1.2)
    pos, radius = np.asarray(start, float), radius_mm / sp
    step = n / 8.0
    for seg in range(9):
        heading += rng.normal(0, 0.2)
        nxt = pos + step * np.array([math.sin(heading), math.cos(heading)])
        _draw_segment(occ, pos, nxt, radius, radius * 0.9)
        if depth < 1 and seg in (2, 4, 6) and rng.random() < 0.35:
            side = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9)
            _vessel_tree(rng, n, sp, occ, depth + 1, pos.copy(), heading + side, radius * sp * 0.7)
        pos, radius = nxt, radius * 0.9
        if radius < 0.25:
            break


def _chest_wall(rng, rr, cc, sp: float, clear_mm: float, canvas: np.ndarray) -> bool:
    """Sometimes put pleura, extrapleural fat, muscle and a rib at the crop's edge."""
    if rng.random() >= P_CHEST_WALL or clear_mm + 4.0 > 20.0:
        return False
    ang = rng.uniform(0, 2 * math.pi)
    normal = np.array([math.sin(ang), math.cos(ang)])
    dist = rng.uniform(clear_mm + 4.0, 20.0) / sp
    curv = rng.uniform(80.0, 200.0) / sp  # the lung surface is a large circle
    centre = normal * (dist - curv)
    depth = np.hypot(rr - centre[0], cc - centre[1]) - curv  # px beyond the pleura
    pleura, fat = 0.7 / sp, rng.uniform(1.0, 3.0) / sp
    muscle = MUSCLE_HU + 8.0 * _smooth(rng, rr.shape[0], 1.5)
    wall = np.where(depth < pleura, PLEURA_HU, np.where(depth < pleura + fat, FAT_HU, muscle))
    if rng.random() < P_RIB:
        along = np.array([-normal[1], normal[0]])
        semi_t, semi_n = rng.uniform(4.0, 6.0) / sp, rng.uniform(2.5, 3.5) / sp
        mid = normal * (dist + pleura + fat + semi_n + rng.uniform(1.0, 4.0) / sp)
        mid = mid + along * rng.uniform(-12.0, 12.0) / sp
        t = (rr - mid[0]) * along[0] + (cc - mid[1]) * along[1]
        u = (rr - mid[0]) * normal[0] + (cc - mid[1]) * normal[1]
        rho = np.hypot(t / semi_t, u / semi_n)
        wall = np.where(rho < 1.0, np.where(rho > 1.0 - 1.0 / sp / semi_n, RIB_CORTEX_HU,
                                            RIB_MARROW_HU), wall)
    occ = np.clip(depth + 0.5, 0.0, 1.0)
    canvas *= 1.0 - occ
    canvas += occ * wall
    return True


def draw_scene(rng: np.random.Generator, crop: int, sp: float, emphysema: bool, clear_mm: float,
               noise_sd: float) -> Scene:
    """Anatomy around a nodule: parenchyma texture (with emphysema holes when present),
    vessels in and across the plane, sometimes chest wall; `clear_mm` keeps the wall off the
    nodule."""
    n = crop + 2 * int(math.ceil(PAD_MM / sp))
    rr, cc = _grid(n)
    lung = rng.uniform(*(EMPHYSEMA_LUNG_HU if emphysema else LUNG_HU))
    canvas = lung + 14.0 * _smooth(rng, n, 8.0) + 10.0 * _smooth(rng, n, 1.5)
    if emphysema:
        holes = np.clip((_smooth(rng, n, 2.5) - 1.1) / 0.5, 0.0, 1.0)
        canvas += holes * (EMPHYSEMA_HOLE_HU - canvas)
    occ = np.zeros((n, n), np.float32)
    for _ in range(1 + int(rng.random() < 0.5)):
        _vessel_tree(rng, n, sp, occ)
    for _ in range(int(rng.poisson(9))):  # vessels cut across the plane: round dots
        p = rng.uniform(-0.5, 0.5, 2) * n
        r = rng.uniform(0.25, 1.0) / sp
        _draw_segment(occ, p, p, r, r)
    canvas += occ * (rng.uniform(*VESSEL_HU) - canvas)
    wall = _chest_wall(rng, rr, cc, sp, clear_mm, canvas)
    return Scene(canvas=canvas.astype(np.float32), lung_hu=float(lung), noise_sd=noise_sd,
                 chest_wall=wall)


def draw_shape(rng: np.random.Generator, crop: int, sp: float, margin: int | None,
               malignant: bool, subsolid: bool) -> Shape:
    """Orientation, contour harmonics (malignant ones more lobulated), edge sharpness by margin
    (smooth sharp, poorly defined blurred and ragged), radial spicules when spiculated."""
    ks = np.arange(2, 11)
    amps = np.where(ks <= LOBULATION_MAX_ORDER, rng.uniform(0.02, 0.05, ks.size) if malignant
                    else rng.uniform(0.0, 0.025, ks.size), 0.0)
    edge_mm = 0.25
    if subsolid:  # ground glass fades into the lung even when called smooth
        edge_mm = rng.uniform(0.5, 0.8)
    if margin == 3:  # poorly defined: blurred, ragged border
        edge_mm = rng.uniform(1.0, 1.6)
        amps = amps + np.where(ks > LOBULATION_MAX_ORDER, rng.uniform(0.01, 0.035, ks.size), 0.0)
    n_spic = int(rng.integers(6, 13)) if margin == 1 else 0
    return Shape(
        angle=float(rng.uniform(0, math.pi)), ks=ks, amps=amps,
        phases=rng.uniform(0, 2 * math.pi, ks.size), edge_mm=float(edge_mm),
        solid_hu=float(rng.uniform(*SOLID_HU)), ggo_hu=float(rng.uniform(*GGO_HU)),
        core_offset=rng.uniform(-0.25, 0.25, 2), texture=_smooth(rng, crop, 1.5),
        spicule_angles=rng.uniform(0, 2 * math.pi, n_spic),
        spicule_len=rng.uniform(0.15, 0.5, n_spic),
        spicule_width_mm=rng.uniform(0.4, 0.8, n_spic))


def _body(u, v, a: float, b: float, shape: Shape, lobulation: float, edge_px: float) -> np.ndarray:
    """Occupancy of a lobulated ellipse with semi-axes a, b (pixels) and soft edge."""
    rho = np.hypot(u / a, v / b)
    theta = np.arctan2(v / b, u / a)
    bound = np.ones_like(rho)
    for k, amp, phase in zip(shape.ks, shape.amps, shape.phases, strict=True):
        if amp > 0:  # lobulation (low orders) may grow; the ragged high orders do not
            scale = lobulation if k <= LOBULATION_MAX_ORDER else 1.0
            bound += (scale * amp) * np.cos(k * theta + phase)
    signed = (bound - rho) * math.sqrt(a * b)
    return 0.5 * (1.0 + special.erf(signed / (math.sqrt(2.0) * max(edge_px, 0.3))))


def _nodule(crop: int, rot: np.ndarray, shift: np.ndarray, shape: Shape, state: State, sp: float,
            lung: float) -> np.ndarray:
    """HU map of the nodule (body, solid core, spicules) on the crop whose pixel o sits at
    rot @ o + shift in the nodule-centred scene frame (row, col)."""
    rr, cc = _grid(crop)
    qr = rot[0, 0] * rr + rot[0, 1] * cc + shift[0]
    qc = rot[1, 0] * rr + rot[1, 1] * cc + shift[1]
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    u, v = qc * cos + qr * sin, -qc * sin + qr * cos
    a, b = state.long_mm / 2 / sp, state.perp_mm / 2 / sp
    occ = _body(u, v, a, b, shape, state.lobulation, shape.edge_mm / sp)
    solid = shape.solid_hu + state.density_shift + 8.0 * shape.texture
    ggo = shape.ggo_hu + state.density_shift + 35.0 * shape.texture
    if state.attenuation == 1:
        hu = solid
    else:
        hu = ggo
        if state.attenuation == 3 and state.core_fraction > 0:
            f = state.core_fraction
            du, dv = shape.core_offset * (1 - f) * np.array([a, b])
            core = _body(u - du, v - dv, a * f, b * f, shape, state.lobulation, 0.6)
            hu = ggo + core * (solid - ggo)
    value = lung + occ * (hu - lung)
    if len(shape.spicule_angles):
        spic = np.zeros_like(occ)
        uv_to_scene = np.array([[sin, cos], [cos, -sin]])  # (u, v) -> (row, col)
        scene_to_out = rot.T
        for ang, rel, width in zip(shape.spicule_angles, shape.spicule_len,
                                   shape.spicule_width_mm, strict=True):
            base = np.array([a * math.cos(ang), b * math.sin(ang)]) * 0.85
            tip = base + base / (np.linalg.norm(base) + 1e-9) * rel * state.long_mm * state.spicule_scale / sp
            p0 = scene_to_out @ (uv_to_scene @ base - shift)
            p1 = scene_to_out @ (uv_to_scene @ tip - shift)
            _draw_segment(spic, p0, p1, width / sp, 0.15)
        spic_hu = SPICULE_HU if state.attenuation != 2 else shape.ggo_hu + 150.0
        value = np.maximum(value, lung + spic * (spic_hu - lung))
    return value


def render(scene: Scene, shape: Shape, state: State, rng: np.random.Generator, crop: int,
           sp: float) -> np.ndarray:
    """One crop: the scene under a small rigid misregistration, the nodule, blur, noise.

    Returns float32 HU rounded to whole units like a CT image.
    """
    n = scene.canvas.shape[0]
    ang = math.radians(rng.normal(0.0, MISREG_ROT_DEG))
    shift = rng.normal(0.0, MISREG_SHIFT_MM / sp, 2)
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    c_out, c_in = (crop - 1) / 2.0, (n - 1) / 2.0
    offset = c_in + shift - rot @ np.array([c_out, c_out])
    bg = ndimage.affine_transform(scene.canvas, rot, offset=offset, output_shape=(crop, crop),
                                  order=1, mode="nearest")
    value = _nodule(crop, rot, shift, shape, state, sp, scene.lung_hu)
    img = ndimage.gaussian_filter(np.maximum(bg, value), PSF_SIGMA_MM / sp)
    noise = _smooth(rng, crop, NOISE_CORR_MM / sp)
    img = img + scene.noise_sd * noise
    return np.clip(np.rint(img), *HU_CLIP).astype(np.float32)
