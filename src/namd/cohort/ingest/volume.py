"""CT volumes in Hounsfield units with their geometry: DICOM series, NIfTI, MHA/MHD(+RAW).

A `Volume` knows its affine (origin, spacing, direction; world = LPS millimetres as in DICOM
and ITK) and hands out single axial slices as SimpleITK images in HU. DICOM slices are read
on demand (a 2D crop needs one slice, not the whole series), each file's pixel data checked
against its header first (pydicom), so that a short buffer is never decoded into garbage;
NIfTI and MHA are read whole and reoriented to LPS axes so that the third axis is always the
axial one.
"""

from __future__ import annotations

import math
import re
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import UID, RLELossless

from namd.cohort.ingest.dicom import Series, choose_series, normal_of, scan_exam
from namd.cohort.ingest.errors import IngestError
from namd.run.errors import one_line

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
# Spacing given to the normal axis of a one-slice image: any point near the slice plane then
# falls inside it, so in-plane resampling never blends or pads along z.
_FLAT = 1.0e4
SLICE_CACHE = 8

sitk.ProcessObject.SetGlobalWarningDisplay(False)


def is_image_file(path: str | Path) -> bool:
    """True for NIfTI / MHA / MHD / NRRD paths (read whole with SimpleITK)."""
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


@dataclass
class Volume(ABC):
    """Geometry of a CT volume plus access to its axial slices in HU (subclasses read them)."""

    source: str
    description: str
    size: tuple[int, int, int]
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    notes: list[str] = field(default_factory=list)

    def to_index(self, world: np.ndarray) -> np.ndarray:
        """Continuous voxel index (x, y, z) of a world point in mm."""
        matrix = self.direction @ np.diag(self.spacing)
        return np.linalg.solve(matrix, np.asarray(world, float) - self.origin)

    def to_world(self, index: np.ndarray) -> np.ndarray:
        """World point (mm) of a continuous voxel index (x, y, z)."""
        return self.origin + self.direction @ (np.asarray(index, float) * self.spacing)

    def voxel_to_world(self, index: np.ndarray) -> np.ndarray:
        """World point of a voxel index as the user counts it (the file's own storage order)."""
        return self.to_world(index)

    def slice_file(self, k: int) -> str:
        """The file that holds slice k (for messages about its pixels)."""
        return self.source

    def slice_of_instance(self, instance: int) -> int:
        """Slice index of a DICOM InstanceNumber (NLST sct_slice_num)."""
        raise IngestError(f"slice numbers (InstanceNumber {instance}) need a DICOM series, and "
                          f"{self.source} is not one", field="slice number", category="invalid")

    @abstractmethod
    def slice_image(self, k: int) -> sitk.Image:
        """Axial slice k as a one-slice 3D float32 image in HU with its world geometry."""

    @staticmethod
    def _flatten(image: sitk.Image) -> sitk.Image:
        """Give a one-slice image a huge normal spacing (see _FLAT)."""
        sx, sy, _ = image.GetSpacing()
        image.SetSpacing((sx, sy, _FLAT))
        return image


class ImageVolume(Volume):
    """A volume read whole (NIfTI, MHA, MHD+RAW, NRRD, or a DICOM series read at once)."""

    def __init__(self, image: sitk.Image, source: str, description: str,
                 max_tilt_degrees: float = 5.0, notes: list[str] | None = None):
        if image.GetDimension() == 2:
            image = sitk.JoinSeries([image])
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise IngestError(f"expected a 3D grey-value image, got {image.GetDimension()}D with "
                              f"{image.GetNumberOfComponentsPerPixel()} component(s)", source)
        image = sitk.Cast(image, sitk.sitkFloat32)
        self._stored = (np.array(image.GetOrigin()), np.array(image.GetSpacing()),
                        np.array(image.GetDirection()).reshape(3, 3))
        image = sitk.DICOMOrient(image, "LPS")
        direction = np.array(image.GetDirection()).reshape(3, 3)
        tilt = math.degrees(math.acos(min(1.0, abs(float(direction[2, 2])))))
        if tilt > max_tilt_degrees:
            raise IngestError(f"not an axial volume (slice normal {tilt:.1f} degrees from z)",
                              source, category="inconsistent series")
        super().__init__(source, description, tuple(image.GetSize()), np.array(image.GetOrigin()),
                         np.array(image.GetSpacing()), direction, list(notes or []))
        self.image = image

    def voxel_to_world(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices count in the file's storage order, before reorientation to LPS."""
        origin, spacing, direction = self._stored
        return origin + direction @ (np.asarray(index, float) * spacing)

    def slice_image(self, k: int) -> sitk.Image:
        """Slice k cut from the volume in memory."""
        return self._flatten(self.image[:, :, k:k + 1])


class DicomVolume(Volume):
    """A checked DICOM series whose slices are read one at a time, on demand; `redact`
    (--hash-ids) names it without its free-text tags (`Series.label`)."""

    def __init__(self, series: Series, source: str, reason: str, redact: bool = False):
        first = series.slices[0]
        o = first.orientation
        direction = np.column_stack([o[:3], o[3:], normal_of(o)])
        rows, cols = first.shape
        self.label = series.label(redact)
        super().__init__(source, f"{self.label} ({reason})", (cols, rows, len(series.slices)),
                         first.position.copy(), np.array([*first.spacing, series.step or 1.0]),
                         direction, list(series.repairs))
        self.series = series
        self._cache: OrderedDict[int, sitk.Image] = OrderedDict()  # nodules often share slices
        self._instances = {h.instance: k for k, h in enumerate(series.slices) if h.instance is not None}

    def slice_file(self, k: int) -> str:
        """The DICOM file of slice k."""
        return str(self.series.slices[k].path)

    def slice_of_instance(self, instance: int) -> int:
        """Slice index whose InstanceNumber is `instance`."""
        if instance not in self._instances:
            lo, hi = min(self._instances, default=0), max(self._instances, default=0)
            raise IngestError(f"no slice with InstanceNumber {instance} in {self.label} "
                              f"(instances {lo}-{hi})", self.source, field="slice number",
                              category="coordinate outside volume")
        return self._instances[instance]

    def slice_image(self, k: int) -> sitk.Image:
        """Read one file with SimpleITK (GDCM applies RescaleSlope/Intercept -> HU); the last
        few slices read are kept."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        image = self._read_slice(k)
        self._cache[k] = image
        if len(self._cache) > SLICE_CACHE:
            self._cache.popitem(last=False)
        return image

    def _read_slice(self, k: int) -> sitk.Image:
        """One slice file as a flattened float32 HU image, its pixel data checked against its
        header before decoding (length) and after (shape); errors name the file."""
        path = self.series.slices[k].path
        ds = read_pixel_header(path)
        try:
            image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        except RuntimeError as exc:
            raise IngestError(f"cannot read pixel data ({_first_line(exc)})", path,
                              category="unreadable file") from None
        check_decoded_shape(path, ds, image.GetSize())
        if image.GetSize() != (*self.size[:2], 1):
            raise IngestError(f"pixel data is {image.GetSize()} (columns x rows x frames), the "
                              f"series is {self.size[0]} x {self.size[1]} with one frame per file",
                              path, category="unreadable file")
        return self._flatten(image)


def read_pixel_header(path: Path) -> pydicom.Dataset:
    """The whole dataset of one slice, its pixel data checked against the header before
    anything decodes it: a decoder given a header larger than its buffer reads past the
    end, and returns different garbage on each run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise IngestError(f"cannot read pixel data ({type(exc).__name__}: {one_line(exc, 200)})",
                          path, category="unreadable file") from None
    if "PixelData" not in ds:
        raise IngestError("cannot read pixel data: the file has none", path, field="PixelData",
                          category="unreadable file")
    syntax = _transfer_syntax(ds)
    if not _encapsulated(ds, syntax):
        _check_native_length(path, ds)
    elif syntax == RLELossless:
        _check_rle_length(path, ds)
    return ds


def _transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """The file's TransferSyntaxUID, or None when it has no file meta information."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(syntax)) if syntax else None


def _encapsulated(ds: pydicom.Dataset, syntax: UID | None) -> bool:
    """True for compressed (encapsulated) pixel data: known from the transfer syntax, or, when
    that is missing or private, from the undefined length that encapsulation uses."""
    try:
        if syntax is not None:
            return bool(syntax.is_compressed)
    except ValueError:  # not a transfer syntax pydicom knows
        pass
    return bool(ds["PixelData"].is_undefined_length)


def _pixel_tags(path: Path, ds: pydicom.Dataset) -> tuple[int, int, int, int, int]:
    """Rows, Columns, frames, SamplesPerPixel, BitsAllocated; a missing one is an error."""
    for tag in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation"):
        if ds.get(tag) in (None, ""):
            raise IngestError(f"missing DICOM tag {tag}", path, field=tag, category="invalid")
    return (int(ds.Rows), int(ds.Columns), get_nr_frames(ds, warn=False),
            int(ds.SamplesPerPixel), int(ds.BitsAllocated))


def _check_native_length(path: Path, ds: pydicom.Dataset) -> None:
    """Uncompressed pixel data must hold exactly what the header describes (pydicom's
    expected length; one trailing padding byte allowed): shorter data would be read past its
    end, longer data means rows or columns are wrong and the image would be sheared."""
    rows, cols, frames, samples, bits = _pixel_tags(path, ds)
    expected = get_expected_length(ds)
    actual = len(ds.PixelData)
    if not expected <= actual <= expected + 1:
        raise IngestError(f"pixel data does not match the header: {actual} bytes, but Rows x "
                          f"Columns x frames x samples x bits allocated = {rows} x {cols} x "
                          f"{frames} x {samples} x {bits} bits = {expected} bytes", path,
                          field="PixelData", category="unreadable file")


def _check_rle_length(path: Path, ds: pydicom.Dataset) -> None:
    """RLE data holds no image size and GDCM shapes it by the header, so a header smaller
    than the data would shear the image unnoticed: each segment must decode (pydicom's RLE
    decoder, first segment of the first frame) to Rows x Columns bytes, one padding byte allowed."""
    from pydicom.pixels.decoders.rle import _rle_decode_segment, _rle_parse_header  # pydicom 3
    rows, cols, frames, _, _ = _pixel_tags(path, ds)
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
        offsets = [*_rle_parse_header(frame[:64]), len(frame)]
        got = len(_rle_decode_segment(frame[offsets[0]:offsets[1]]))
    except Exception as exc:  # malformed encapsulation or RLE header
        raise IngestError(f"cannot read pixel data (RLE: {type(exc).__name__}: {one_line(exc, 200)})",
                          path, field="PixelData", category="unreadable file") from None
    if not rows * cols <= got <= rows * cols + 1:
        raise IngestError(f"pixel data does not match the header: an RLE segment decodes to {got} "
                          f"bytes, but Rows x Columns = {rows} x {cols} = {rows * cols}", path,
                          field="PixelData", category="unreadable file")


def check_decoded_shape(path: Path, ds: pydicom.Dataset, size: tuple[int, ...]) -> None:
    """The decoded image (SimpleITK size: columns, rows, frames) must be what the header says:
    GDCM sizes JPEG images by their codestream, so this is where a wrong header shows."""
    rows, cols, frames, _, _ = _pixel_tags(path, ds)
    got = tuple(size) + (1,) * (3 - len(size))
    if got != (cols, rows, frames):
        raise IngestError(f"decoded pixel data is {' x '.join(map(str, got))} (columns x rows x "
                          f"frames), the header says {cols} x {rows} x {frames}", path,
                          field="PixelData", category="unreadable file")


def _first_line(exc: Exception) -> str:
    """The useful line of an ITK exception (they span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "description" in ln.lower() or "error" in ln.lower()]
    # Without object addresses ('GDCMImageIO(0x55fa...)'), the same file gives the same message.
    return re.sub(r"\(0x[0-9a-fA-F]+\)", "", (useful or lines or ["unknown error"])[-1])[:200]


def read_image_file(path: str | Path, max_tilt_degrees: float = 5.0) -> ImageVolume:
    """Read a NIfTI / MHA / MHD+RAW / NRRD file whole, as HU (the file's stored scaling applied)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError("image file not found", path, category="unreadable file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise IngestError(f"cannot read image ({_first_line(exc)})", path,
                          category="unreadable file") from None
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    kind = next(s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)).lstrip(".").upper()
    # No file name here: provenance must not repeat ids (paths may hold them; see --hash-ids).
    return ImageVolume(image, str(path), f"{kind} image {size} at {spacing} mm", max_tilt_degrees)


def open_volume(path: str | Path, series_uid: str | None = None, tolerance: float = 0.05,
                max_tilt_degrees: float = 5.0, avoid_kernels: tuple[str, ...] = (),
                redact: bool = False) -> Volume:
    """Open an image file, or choose and open one DICOM series of a folder (or a .dcm file);
    `redact` (--hash-ids): the volume's description holds no DICOM free text."""
    if is_image_file(path):
        if series_uid:
            raise IngestError("a series UID was given for a single image file", path,
                              field="series_uid")
        return read_image_file(path, max_tilt_degrees)
    series = scan_exam(path, tolerance, max_tilt_degrees)
    chosen, reason = choose_series(series, path, series_uid, avoid_kernels)
    return DicomVolume(chosen, str(path), reason, redact)
