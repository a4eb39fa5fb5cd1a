"""Builders of small test inputs: DICOM series (pydicom), NIfTI/MHA volumes (SimpleITK),
the real Lung-PET-CT-Dx slices in tests/fixtures, and a small crop config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from namd.config import load_config

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
REAL = FIXTURES / "lung-pet-ct-dx-A0002"
REAL_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6655.2359.207154000096236603057216610983"
PHI = ("Doe^John", "SECRET-MRN-123")


def write_slice(path: Path, hu: np.ndarray, position, *, series_uid: str, study_uid: str,
                instance: int, spacing=(0.7, 0.7), iop=(1, 0, 0, 0, 1, 0), slope=1.0,
                intercept=-1024.0, thickness=2.0, kernel="B30f", description="test",
                series_number=1, localizer=False) -> None:
    """One CT slice with the tags a real scanner writes (and a patient name to leak)."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", PHI[0], PHI[1]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = study_uid
    ds.SeriesNumber, ds.InstanceNumber = series_number, instance
    ds.SeriesDescription, ds.ConvolutionKernel, ds.SliceThickness = description, kernel, thickness
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [spacing[1], spacing[0]]  # DICOM order: row spacing, column spacing
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, volume: np.ndarray, spacing=(0.7, 0.7, 2.0), origin=(-10.0, -20.0, 0.0),
                 *, series_uid: str | None = None, study_uid: str | None = None, names=None,
                 **tags) -> str:
    """A (z, y, x) HU volume as an axial DICOM series; file i holds slice z = origin + i*dz.

    `names` gives the file names (default s000.dcm ...), so tests can scramble them."""
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for i, hu in enumerate(volume):
        name = names[i] if names else f"s{i:03d}.dcm"
        pos = (origin[0], origin[1], origin[2] + i * spacing[2])
        write_slice(folder / name, hu.astype(np.float32), pos, series_uid=series_uid,
                    study_uid=study_uid, instance=i + 1, spacing=spacing[:2], **tags)
    return series_uid


def ball(shape=(10, 32, 32), centre=(5, 16, 16), radius=4.0, inside=40.0, outside=-800.0) -> np.ndarray:
    """A (z, y, x) volume with a bright ball (a 'nodule') at voxel `centre`."""
    z, y, x = np.indices(shape)
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    return np.where(r <= radius, inside, outside).astype(np.float32)


def write_image(path: Path, volume: np.ndarray, spacing=(0.7, 0.7, 2.0), origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """A (z, y, x) volume as NIfTI / MHA / MHD with the given geometry (SimpleITK)."""
    img = sitk.GetImageFromArray(volume.astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """A CSV from dicts (all values as written)."""
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def cfg():
    """Small crops so the tests stay fast: 32 x 32 at 1 mm."""
    return load_config(overrides=["data.crop_size=32", "data.pixel_spacing_mm=1.0"])


@pytest.fixture
def real_series() -> Path:
    """Three real slices (InstanceNumber 14-16) of Lung_Dx-A0002 (CC BY 4.0, see ATTRIBUTION)."""
    return REAL / "dicom"


@pytest.fixture
def ct_small() -> Path:
    """pydicom's bundled one-slice CT."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def no_phi(folder: Path) -> bool:
    """True when no file under `folder` holds a patient name or id from the DICOM headers."""
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix != ".npy":
            text = f.read_text(errors="ignore")
            if any(p in text for p in (*PHI, "Lung_Dx-A0002")):
                return False
    return True



@pytest.fixture(scope="session")
def build() -> SimpleNamespace:
    """The builders above, for test modules (conftest helpers cannot be imported)."""
    return SimpleNamespace(write_slice=write_slice, write_series=write_series, ball=ball,
                           write_image=write_image, write_csv=write_csv, no_phi=no_phi,
                           real_uid=REAL_SERIES_UID, real_root=REAL)
