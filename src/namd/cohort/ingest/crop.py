"""Nodule-centred 2D axial crops at a fixed physical pixel spacing.

The crop is an axis-aligned square in the world (LPS) frame: columns run towards the
patient's left (+x), rows towards posterior (+y), i.e. the usual radiological view whatever
the storage order of the volume. It lies on one real slice: the slice given (a DICOM
InstanceNumber such as NLST's sct_slice_num, or a voxel slice index), otherwise the slice
nearest the coordinate's z (no blending of neighbouring slices). In-plane it is resampled
with linear interpolation by SimpleITK; when the crop is coarser than the scan by 20 % or
more, the slice is first smoothed with skimage's anti-aliasing rule (sigma = (factor-1)/2
source pixels). Pixels outside the slice are air (-1000 HU) and the crop is flagged `padded`.
A crop whose values are not plausible HU (namd.cohort.imaging.HU_RANGE, the bounds `predict` uses)
is an error naming the slice's file, never a crop in the cohort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from namd.cohort.imaging import HU_RANGE, hu_problem
from namd.cohort.ingest.errors import IngestError
from namd.cohort.ingest.volume import Volume

AIR_HU = -1000.0
PADDED = "padded"
ANTIALIAS_FROM = 1.2  # smooth when the crop spacing is >= 1.2 x the scan's in-plane spacing


@dataclass(frozen=True)
class Position:
    """Where a nodule is: world mm (LPS) or voxel index (column, row, slice), and maybe a slice.

    `instance` is the DICOM InstanceNumber of the slice of greatest diameter; when given it
    chooses the slice and `z` (if any) is only checked against it.
    """

    x: float
    y: float
    z: float | None = None
    space: str = "world"
    instance: int | None = None

    def describe(self) -> str:
        """Short text for provenance and messages."""
        z = "?" if self.z is None else f"{self.z:g}"
        unit = "mm" if self.space == "world" else "px"
        text = f"{self.space} ({self.x:g}, {self.y:g}, {z}) {unit}"
        return text + (f", instance {self.instance}" if self.instance is not None else "")


@dataclass(frozen=True)
class CropGeometry:
    """Size (pixels) and spacing (mm) of every crop; from DataConfig."""

    size: int
    spacing_mm: float


def _plane_point(volume: Volume, x: float, y: float, k: int) -> np.ndarray:
    """The world point with in-plane coordinates (x, y) that lies on slice k's plane."""
    a = volume.to_index(np.array([x, y, 0.0]))[2]
    b = volume.to_index(np.array([x, y, 1.0]))[2] - a
    return np.array([x, y, (k - a) / b])


def _inside(index: np.ndarray, size: tuple[int, ...], axes: int) -> bool:
    """True when a continuous index lies within the voxels (ITK's [-0.5, n-0.5] convention)."""
    return all(-0.5 <= index[i] <= size[i] - 0.5 for i in range(axes))


def locate(volume: Volume, pos: Position, agreement_mm: float = 10.0) -> tuple[int, np.ndarray]:
    """Slice index and world centre of a nodule; errors when it lies outside the volume."""
    nz = volume.size[2]
    k_given = volume.slice_of_instance(pos.instance) if pos.instance is not None else None
    if pos.space not in ("world", "voxel"):
        raise IngestError(f"unknown coordinate space {pos.space!r} (world or voxel)", field="space")
    z = pos.z
    if pos.space == "voxel":
        if z is None and k_given is None:
            raise IngestError("no slice: give z or a slice number", field="z")
        point = volume.voxel_to_world(np.array([pos.x, pos.y, k_given if z is None else z], float))
        x, y, z = (float(v) for v in point)
    else:
        x, y = pos.x, pos.y
    k_z = None if z is None else float(volume.to_index(np.array([x, y, z]))[2])
    if k_given is None and k_z is None:
        raise IngestError("no slice: give z or a slice number", field="z")
    k = k_given if k_given is not None else int(round(k_z))
    if k_z is not None and not -0.5 <= k_z <= nz - 0.5:
        raise IngestError(f"coordinate {pos.describe()} lies outside the volume along z "
                          f"(slice index {k_z:.1f} of 0-{nz - 1})", field="z",
                          category="coordinate outside volume")
    if k_z is not None and k_given is not None:
        gap = abs(k_z - k_given) * volume.spacing[2]
        if gap > agreement_mm:
            raise IngestError(f"z of {pos.describe()} is {gap:.1f} mm from the given slice "
                              f"(more than {agreement_mm:g} mm: is this the series that was read?)",
                              field="z", category="inconsistent position")
    if not 0 <= k < nz:
        raise IngestError(f"slice {k} outside the volume (0-{nz - 1})", field="z",
                          category="coordinate outside volume")
    centre = _plane_point(volume, x, y, k)
    index = volume.to_index(centre)
    if not _inside(index, volume.size, 2):
        raise IngestError(f"coordinate {pos.describe()} lies outside the volume in-plane (voxel "
                          f"{index[0]:.1f}, {index[1]:.1f} of {volume.size[0]}x{volume.size[1]})",
                          field="x/y", category="coordinate outside volume")
    return k, centre


def _reference(geometry: CropGeometry, centre: np.ndarray) -> sitk.Image:
    """The crop's sampling grid: a square centred on the nodule, axis-aligned in LPS."""
    n, s = geometry.size, geometry.spacing_mm
    half = s * (n - 1) / 2.0
    ref = sitk.Image([n, n, 1], sitk.sitkFloat32)
    ref.SetSpacing((s, s, 1.0))
    ref.SetOrigin((float(centre[0]) - half, float(centre[1]) - half, float(centre[2])))
    return ref


def _corner_indices(image: sitk.Image, ref: sitk.Image) -> np.ndarray:
    """Continuous indices (in `image`) of the four corner pixels of the grid `ref`."""
    n = ref.GetSize()[0] - 1
    corners = [ref.TransformIndexToPhysicalPoint((i, j, 0)) for i in (0, n) for j in (0, n)]
    return np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])


def _antialias(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Gaussian smoothing before downsampling (skimage.transform.resize's sigma rule)."""
    sx, sy, _ = image.GetSpacing()
    factor = target_mm / min(sx, sy)
    if factor < ANTIALIAS_FROM:
        return image
    sigma_mm = [(target_mm / sp - 1.0) / 2.0 * sp for sp in (sx, sy)]
    return sitk.DiscreteGaussian(image, [sigma_mm[0] ** 2, sigma_mm[1] ** 2, 0.0], 32, 0.01, True)


def extract_crop(volume: Volume, k: int, centre: np.ndarray,
                 geometry: CropGeometry) -> tuple[np.ndarray, list[str]]:
    """The (size, size) float32 HU crop on slice k around `centre`, and its flags."""
    image = volume.slice_image(k)
    ref = _reference(geometry, centre)
    corners = _corner_indices(image, ref)
    nx, ny = image.GetSize()[:2]
    flags = [] if all(_inside(c, (nx, ny), 2) for c in corners) else [PADDED]
    margin = 2 + int(math.ceil(3 * geometry.spacing_mm / min(image.GetSpacing()[:2])))
    x0 = max(0, int(math.floor(corners[:, 0].min())) - margin)
    x1 = min(nx, int(math.ceil(corners[:, 0].max())) + margin + 1)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - margin)
    y1 = min(ny, int(math.ceil(corners[:, 1].max())) + margin + 1)
    region = _antialias(image[x0:x1, y0:y1, :], geometry.spacing_mm)
    out = sitk.Resample(region, ref, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    crop = sitk.GetArrayFromImage(out)[0].copy()
    problem = hu_problem(crop)
    if problem:
        lo, hi = HU_RANGE
        raise IngestError(f"crop on slice {k}: {problem} (plausible {lo:g}..{hi:g} after "
                          "RescaleSlope/RescaleIntercept)", volume.slice_file(k), category="invalid")
    return crop, flags
