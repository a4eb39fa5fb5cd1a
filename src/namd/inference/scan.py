"""A model-ready baseline crop from a whole CT scan: the one call between a scan and `predict`.

`crop_nodule` opens a DICOM folder (or one .dcm file), a NIfTI or an MHA/MHD/NRRD file, finds
the nodule's slice and cuts an axial HU crop of the model's size and pixel spacing centred on
it, with the rules of the cohort builder (namd.cohort.ingest.crop: one real slice, linear
resampling, anti-aliasing when downsampling, air padding outside the slice), so a crop cut
here matches the crops the model was trained on. `namd predict --image --center [--voxel]`
cuts its crop the same way.

Example (a nodule at LPS x -65.2, y -105.7, z 200 mm; the same point as a voxel index)::

    from namd.inference.scan import crop_nodule
    from namd.inference.patient import predict_patient

    crop = crop_nodule("scan_dicom/", (-65.2, -105.7, 200.0))              # world mm (LPS)
    crop = crop_nodule("scan.nii.gz", (167, 291.5, 1), space="voxel")      # column, row, slice
    crop = crop_nodule("scan.mha", (-65.2, -105.7, 200.0), config=config)  # run's size/spacing
    result = predict_patient("runs/demo", crop, ehr)
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from namd.cohort.ingest.volume import Volume
    from namd.config import NamdConfig

SPACES = ("world", "voxel")


def _geometry(crop_size: int, spacing_mm: float, config: NamdConfig | None) -> tuple[int, float]:
    """Crop size and spacing: the config's data.crop_size / data.pixel_spacing_mm when a config
    is given (a run's crops must match its training crops), else the arguments."""
    if config is not None:
        crop_size, spacing_mm = config.data.crop_size, config.data.pixel_spacing_mm
    if isinstance(crop_size, bool) or not isinstance(crop_size, int | np.integer) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive whole number of pixels, got {crop_size!r}")
    if not (isinstance(spacing_mm, Real) and 0 < float(spacing_mm) < float("inf")):
        raise ValueError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    return int(crop_size), float(spacing_mm)


def _centre(center: Sequence[float], space: str) -> tuple[float, float, float]:
    """The centre as three finite floats; a wrong length, value or space is a one-line error
    (checked before the scan is read, which can take seconds)."""
    from namd.cohort.ingest.errors import IngestError

    if space not in SPACES:
        raise IngestError(f"unknown coordinate space {space!r} (world or voxel)", field="space")
    try:
        values = tuple(float(v) for v in center)
    except (TypeError, ValueError):
        raise IngestError(f"centre must be three numbers (x, y, z), got {center!r}",
                          field="center") from None
    if len(values) != 3 or not np.isfinite(values).all():
        raise IngestError(f"centre must be three finite numbers (x, y, z), got {center!r}",
                          field="center")
    return values


def crop_nodule_flagged(path: str | Path, center: Sequence[float], space: str = "world",
                        crop_size: int = 64, spacing_mm: float = 0.7, *,
                        config: NamdConfig | None = None) -> tuple[np.ndarray, list[str]]:
    """`crop_nodule`'s crop and its flags (["padded"] when part of the crop lies outside the
    slice and was filled with air), for callers that record how a crop was made."""
    from namd.cohort.ingest.volume import open_volume

    _geometry(crop_size, spacing_mm, config)
    _centre(center, space)  # both checked before the scan is read
    return crop_volume_flagged(open_volume(path), center, space, crop_size, spacing_mm,
                               config=config)


def crop_volume_flagged(volume: Volume, center: Sequence[float], space: str = "world",
                        crop_size: int = 64, spacing_mm: float = 0.7, *,
                        config: NamdConfig | None = None) -> tuple[np.ndarray, list[str]]:
    """`crop_nodule_flagged` on a volume already open (namd.cohort.ingest.volume.open_volume),
    for callers that cut several crops from one scan (`namd serve`: one per click)."""
    from namd.cohort.ingest.crop import CropGeometry, Position, extract_crop, locate

    size, spacing = _geometry(crop_size, spacing_mm, config)
    x, y, z = _centre(center, space)
    k, centre = locate(volume, Position(x, y, z, space=space))
    crop, flags = extract_crop(volume, k, centre, CropGeometry(size, spacing))
    return crop.astype(np.float32, copy=False), list(flags)


def crop_nodule(path: str | Path, center: Sequence[float], space: str = "world",
                crop_size: int = 64, spacing_mm: float = 0.7, *,
                config: NamdConfig | None = None) -> np.ndarray:
    """A (crop_size, crop_size) float32 HU crop centred on a nodule, at spacing_mm per pixel.

    `path` is a DICOM folder or .dcm file (the series is chosen as `namd prepare` does), or a
    NIfTI / MHA / MHD / NRRD file. `center` is (x, y, z): with space="world" LPS millimetres
    as in DICOM and ITK; with space="voxel" a (column, row, slice) index in the file's own
    storage order (for DICOM, slices sorted by position). The crop lies on the slice nearest
    the centre, columns towards the patient's left and rows towards posterior. With `config`,
    its data.crop_size and data.pixel_spacing_mm replace crop_size and spacing_mm.

    Errors are one line (ValueError; namd.cohort.ingest.errors.IngestError for the scan and
    the centre): an unreadable scan names its file, a centre outside the volume or an unknown
    space names the coordinate or space, implausible HU name the slice's file.

    >>> crop = crop_nodule("tests/fixtures/lung-pet-ct-dx-A0002/dicom", (-65.2, -105.7, 200.0))
    >>> crop.shape, crop.dtype
    ((64, 64), dtype('float32'))
    """
    return crop_nodule_flagged(path, center, space, crop_size, spacing_mm, config=config)[0]
