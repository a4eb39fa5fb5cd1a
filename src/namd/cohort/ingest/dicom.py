"""DICOM exams: find the series, check each one, and choose one by a documented rule.

Headers are read with pydicom (no pixel data); pixels are read later, slice by slice, with
SimpleITK (which applies each file's RescaleSlope/RescaleIntercept), after volume.py has
checked each file's pixel data against its header. Files that are not DICOM images
(other formats, notes, DICOMDIR, reports) are skipped with one note per exam; a file that is
DICOM but damaged is an error naming it. Series choice
(docs/data-sources.md): the series an annotation names; otherwise, among the axial CT
series that pass the checks, leave out avoided kernels (bone/edge) when others remain, then
take the thinnest slices, then the most slices, then the lowest SeriesNumber.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from namd.cohort.ingest.errors import IngestError

log = logging.getLogger(__name__)

# Files in an exam folder that are not DICOM and are ignored (annotations, notes, images);
# files with other names are ignored too when their content is not a DICOM image.
NON_DICOM_SUFFIXES = frozenset({".xml", ".md", ".txt", ".csv", ".json", ".jpg", ".jpeg", ".png",
                                ".nii", ".gz", ".mha", ".mhd", ".raw", ".npy", ".html", ".pdf"})
# Names that claim DICOM: such a file that cannot be read as DICOM is an error, not skipped.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
_TAGS = ["SOPClassUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "ImageType",
         "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
         "Rows", "Columns", "SliceThickness", "ConvolutionKernel", "SeriesDescription",
         "SeriesNumber", "RescaleSlope", "RescaleIntercept"]
# ConvolutionKernel words that name a reconstruction filter and nothing else; under --hash-ids a
# kernel made of anything else is withheld (it is free text a person could have typed a name
# into). Codes: Siemens (B30f, Br40d, I31f, Qr40 with an optional strength digit: "Br40d 3"),
# Canon / Toshiba (FC51, FL04), Philips letters (B, C, L, YA, UB, EC); words: GE and others.
_KERNEL_CODE = re.compile(r"[A-Z][a-z]?\d{2}[a-z]?|F[CL]\d{2}|[A-EL]|Y[A-F]|U[A-D]|E[A-C]|\d")
_KERNEL_WORDS = frozenset({"STANDARD", "SOFT", "LUNG", "BONE", "BONEPLUS", "DETAIL", "CHEST",
                           "EDGE", "SMOOTH", "SHARP", "SHARPER", "ULTRA", "HD", "BODY", "HEAD",
                           "MEDIASTINUM", "LUNGS", "STND", "STD"})
KERNEL_WITHHELD = "withheld"


@dataclass
class SliceHeader:
    """What the checks and the sort need from one file's header."""

    path: Path
    sop_uid: str
    instance: int | None
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]  # (column spacing x, row spacing y), ITK order
    shape: tuple[int, int]
    localizer: bool


@dataclass
class Series:
    """One checked series: its files in slice order and its geometry."""

    uid: str
    number: int | None
    description: str
    kernel: str
    modality: str
    thickness: float | None
    slices: list[SliceHeader]
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    step: float = 0.0

    @property
    def usable(self) -> bool:
        """True when the checks found nothing that makes the series unsafe to crop from."""
        return not self.problems

    def label(self, redact: bool = False) -> str:
        """How the series is named in provenance (no UIDs: they are DICOM identifiers).

        `redact` (--hash-ids): no SeriesDescription (free text) and no SeriesNumber (an
        integer a site may fill with anything), and the kernel only when `safe_kernel` knows
        it; what is left is geometry and counts, which name no one."""
        thick = f"{self.thickness:g} mm" if self.thickness else f"{self.step:.3g} mm step"
        if redact:
            return (f"DICOM series, kernel {safe_kernel(self.kernel) or '?'}, {thick}, "
                    f"{len(self.slices)} slices")
        return (f"DICOM series #{self.number if self.number is not None else '?'} "
                f"'{self.description}' kernel {self.kernel or '?'}, {thick}, {len(self.slices)} slices")


def safe_kernel(kernel: str) -> str:
    """The kernel as written when every word of it is a filter code or name (`_KERNEL_CODE`,
    `_KERNEL_WORDS`; at most three words), "withheld" when it holds anything else, "" when
    there is none: the one DICOM text field that --hash-ids keeps, because the kernel decides
    how a crop looks and a checked kernel cannot carry a name or a record number."""
    words = kernel.split()
    if not words:
        return ""
    known = all(_KERNEL_CODE.fullmatch(w) or w.upper() in _KERNEL_WORDS for w in words)
    return " ".join(words) if known and len(words) <= 3 else KERNEL_WITHHELD


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of one DICOM image file; None for a file that is not one (another format, or
    a DICOM object without an image); a damaged DICOM file is an error naming it."""
    if path.suffix.lower() in NON_DICOM_SUFFIXES:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except InvalidDicomError:  # no 'DICM' preamble
        ds = _read_without_preamble(path)
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise IngestError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path,
                          category="unreadable file") from None
    return ds if ds is not None and _is_image(ds) else None


def _read_without_preamble(path: Path) -> pydicom.Dataset | None:
    """A file without the 'DICM' preamble is DICOM only if it parses as a dataset with an
    image (Rows and PixelData): old exports omit the preamble, GIFs and READMEs do not parse.
    Not DICOM: None, or an error when its name (.dcm) says it is DICOM."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, defer_size=1024)  # large values left unread
        is_dicom = "PixelData" in ds and "Rows" in ds
    except Exception:  # what junk makes pydicom raise is not worth listing
        is_dicom = False
    if is_dicom:
        return ds
    if path.suffix.lower() in DICOM_SUFFIXES:
        raise IngestError("not a readable DICOM file (no DICOM header)", path,
                          category="unreadable file")
    return None


def _is_image(ds: pydicom.Dataset) -> bool:
    """False for DICOM objects that hold no image (DICOMDIR, reports, structure sets,
    segmentations): their SOP class is one pydicom knows and not an '... Image Storage'."""
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    if not sop:
        return True
    uid = UID(str(sop))
    return uid.name == str(uid) or "Image Storage" in uid.name


def _note_skipped(root: Path, skipped: list[Path]) -> None:
    """One note per exam for the files that were not DICOM images (a warning, so that worker
    processes, which have no logging set up, still show it)."""
    names = [str(f.relative_to(root)) if f != root else f.name for f in skipped]
    examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    log.warning("skipped %d file(s) that are not DICOM images in %s (e.g. %s)",
                len(skipped), root, examples)


def _slice_header(path: Path, ds: pydicom.Dataset) -> SliceHeader:
    """Geometry fields of one slice; a missing one is an error naming the file and tag."""
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if tag not in ds or ds.get(tag) in (None, ""):
            raise IngestError(f"missing DICOM tag {tag}", path, field=tag, category="invalid")
    try:
        return _geometry(path, ds)
    except (ValueError, TypeError) as exc:
        raise IngestError(f"malformed geometry tag ({exc})", path, category="invalid") from None


def _geometry(path: Path, ds: pydicom.Dataset) -> SliceHeader:
    """Parse the geometry tags (may raise ValueError / TypeError on malformed values)."""
    row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    instance = ds.get("InstanceNumber")
    if len(ds.ImagePositionPatient) != 3 or len(ds.ImageOrientationPatient) != 6:
        raise ValueError("ImagePositionPatient needs 3 values, ImageOrientationPatient 6")
    return SliceHeader(path=path, sop_uid=str(ds.get("SOPInstanceUID", "")),
                       instance=int(instance) if instance not in (None, "") else None,
                       position=np.array([float(v) for v in ds.ImagePositionPatient]),
                       orientation=np.array([float(v) for v in ds.ImageOrientationPatient]),
                       spacing=(col_sp, row_sp), shape=(int(ds.Rows), int(ds.Columns)),
                       localizer="LOCALIZER" in image_type)


def scan_exam(path: str | Path, tolerance: float = 0.05,
              max_tilt_degrees: float = 5.0) -> list[Series]:
    """All series under a folder (or one file), grouped by SeriesInstanceUID, not file name,
    each sorted along its slice normal and checked (`tolerance`: relative slice-step deviation)."""
    root = Path(path)
    if not root.exists():
        raise IngestError("image path not found", root, category="unreadable file")
    files = [root] if root.is_file() else sorted(
        Path(d) / f for d, _, names in os.walk(root) for f in names)
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped: list[Path] = []
    for f in files:
        if f.name.startswith("."):  # .DS_Store and the like: not worth a note
            continue
        ds = _read_header(f)
        if ds is None:
            skipped.append(f)
            continue
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid:
            raise IngestError("missing DICOM tag SeriesInstanceUID", f, field="SeriesInstanceUID")
        groups[uid].append((f, ds))
    if not groups:
        also = f" ({len(skipped)} other file(s))" if skipped else ""
        raise IngestError(f"no DICOM files found{also}", root, category="unreadable file")
    if skipped:
        _note_skipped(root, skipped)
    return [_build_series(uid, items, tolerance, max_tilt_degrees)
            for uid, items in sorted(groups.items())]


def _build_series(uid: str, items: list[tuple[Path, pydicom.Dataset]], tolerance: float,
                  max_tilt_degrees: float) -> Series:
    """Sort one series along its slice normal and run the consistency checks."""
    first = items[0][1]
    thickness = first.get("SliceThickness")
    number = first.get("SeriesNumber")
    series = Series(uid=uid, number=int(number) if number not in (None, "") else None,
                    description=" ".join(str(first.get("SeriesDescription", "")).split()),
                    kernel=" ".join(str(first.get("ConvolutionKernel", "")).replace("\\", " ").split()),
                    modality=str(first.get("Modality", "")).upper(),
                    thickness=float(thickness) if thickness not in (None, "") else None, slices=[])
    headers = [_slice_header(p, ds) for p, ds in items]
    localizers = [h for h in headers if h.localizer]
    if localizers and len(localizers) < len(headers):
        headers = [h for h in headers if not h.localizer]
        series.repairs.append(f"dropped {len(localizers)} localizer image(s)")
    headers = _drop_duplicate_files(headers, series)
    series.slices = headers
    check_series(series, tolerance, max_tilt_degrees)
    return series


def _drop_duplicate_files(headers: list[SliceHeader], series: Series) -> list[SliceHeader]:
    """Copies of the same SOP instance (same UID) are safe to drop; say so."""
    seen: dict[str, SliceHeader] = {}
    for h in headers:
        if h.sop_uid and h.sop_uid in seen:
            continue
        seen[h.sop_uid or str(h.path)] = h
    if len(seen) < len(headers):
        series.repairs.append(f"dropped {len(headers) - len(seen)} duplicate file(s) of the same image")
    return list(seen.values())


def normal_of(orientation: np.ndarray) -> np.ndarray:
    """Unit slice normal from ImageOrientationPatient (row x column direction cosines)."""
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def check_series(series: Series, tolerance: float = 0.05, max_tilt_degrees: float = 5.0) -> None:
    """Sort slices along the normal and record every reason the series is unsafe to use."""
    s = series.slices
    orient = s[0].orientation
    if any(not np.allclose(h.orientation, orient, atol=1e-3) for h in s):
        series.problems.append("mixed slice orientations")
        return
    odd = [h for h in s
           if h.shape != s[0].shape or not np.allclose(h.spacing, s[0].spacing, rtol=1e-3)]
    if odd:
        series.problems.append(f"slices differ in size or pixel spacing ({_size(odd[0])} in "
                               f"{odd[0].path.name}, {_size(s[0])} in {s[0].path.name})")
        return
    normal = normal_of(orient)
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if tilt > max_tilt_degrees:
        series.problems.append(f"not axial (slice normal {tilt:.1f} degrees from the z axis)")
    s.sort(key=lambda h: float(h.position @ normal))
    series.slices = s
    if len(s) < 2:
        series.step = series.thickness or 1.0
        return
    along = np.array([float(h.position @ normal) for h in s])
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        series.problems.append(f"two different images at the same position ({s[i].path.name}, "
                               f"{s[i + 1].path.name})")
        return
    series.step = float(np.median(steps))
    offsets = np.diff(np.stack([h.position for h in s]), axis=0)
    shear = np.linalg.norm(offsets - np.outer(steps, normal), axis=1)
    if np.any(shear > 0.01 * series.step + 1e-3):
        series.problems.append("slice positions do not follow the slice normal (gantry tilt?)")
    bad = np.abs(steps - series.step) > tolerance * series.step
    if np.any(bad):
        i = int(np.argmax(bad))
        ratio = steps[i] / series.step
        what = (f"about {round(ratio) - 1} missing slice(s)" if ratio > 1.5 and
                abs(ratio - round(ratio)) < tolerance * round(ratio) else "slice spacing varies")
        series.problems.append(f"{what}: step {steps[i]:.3g} mm between {s[i].path.name} and "
                               f"{s[i + 1].path.name}, median {series.step:.3g} mm")


def _size(h: SliceHeader) -> str:
    """'512 x 512 at 0.7 x 0.7 mm' (rows x columns, column x row spacing)."""
    return f"{h.shape[0]} x {h.shape[1]} at {h.spacing[0]:g} x {h.spacing[1]:g} mm"


def choose_series(series: list[Series], where: str | Path, wanted_uid: str | None = None,
                  avoid_kernels: tuple[str, ...] = ()) -> tuple[Series, str]:
    """Pick one series by the documented rule; returns it and the reason, or raises naming why."""
    if wanted_uid:
        match = [s for s in series if s.uid == wanted_uid]
        if not match:
            raise IngestError(f"series {wanted_uid} not found among {len(series)} series",
                              where, field="series_uid", category="missing series")
        chosen = match[0]
        if not chosen.usable:
            raise IngestError(f"requested series is unusable: {'; '.join(chosen.problems)}",
                              where, field="series_uid", category="inconsistent series")
        return chosen, "named by the annotation"
    usable = [s for s in series if s.usable and s.modality in ("CT", "")]
    if not usable:
        reasons = "; ".join(f"{s.label()}: {', '.join(s.problems) or 'not CT'}" for s in series)
        raise IngestError(f"no usable CT series ({reasons})", where, category="inconsistent series")
    soft = [s for s in usable if not any(k.upper() in s.kernel.upper() for k in avoid_kernels)]
    pool = soft or usable
    pool.sort(key=lambda s: (s.thickness or s.step, -len(s.slices),
                             s.number if s.number is not None else 1 << 30, s.uid))
    reason = (f"thinnest of {len(usable)} usable series" if len(usable) > 1 else "only usable series")
    return pool[0], reason
