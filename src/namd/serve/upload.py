"""An uploaded scan, read safely: a zipped DICOM folder, or one NIfTI / MHA / NRRD file.

What arrives from the browser is untrusted. Before anything parses it: the name must end in a
scan's suffix (else "not a scan"), the file must fit the upload size limit, and a zip is
unpacked only when every entry stays inside the target folder (no absolute path, no `..`, no
link: "zip slip"), the entries are few enough and what they unpack to, counted while it
unpacks (a zip's stated sizes can lie), fits the unpacked size limit. The scan is then opened
with `namd.cohort.ingest.volume.open_volume`, the reader `namd predict --image` uses.

Each scan gets its own folder under the server's private temporary folder (a DICOM series is
read one slice at a time, so its files must stay while the scan is in use); the store keeps
the last few scans and deletes the folders of the others. Errors are one line and name the
upload by its own file name, never by a temporary path.
"""

from __future__ import annotations

import lzma
import secrets
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from namd.cohort.ingest.volume import Volume, is_image_file, open_volume

SUFFIXES = {".zip": "a zipped DICOM folder", ".nii.gz": "NIfTI", ".nii": "NIfTI", ".mha": "MHA",
            ".nrrd": "NRRD"}
ACCEPTED = "a zipped DICOM folder (.zip), NIfTI (.nii, .nii.gz), MHA (.mha) or NRRD (.nrrd)"
SCAN_DIR = "scan"  # the folder (zip) or file stem (image) of the scan inside its own folder
CHUNK = 1 << 20


class UploadError(ValueError):
    """An upload that cannot be used, said in one line naming the upload by its file name."""


@dataclass(frozen=True)
class Limits:
    """What one upload may be: its size, what a zip unpacks to, and how many entries it has."""

    max_upload_bytes: int = 2 << 30
    max_unpacked_bytes: int = 4 << 30
    max_files: int = 10_000

    @classmethod
    def from_mb(cls, max_upload_mb: float, max_files: int = 10_000) -> Limits:
        """Limits from a size in MB (what a zip may unpack to: twice that)."""
        size = int(max_upload_mb * (1 << 20))
        return cls(size, 2 * size, max_files)


def _mb(n: int) -> str:
    """A byte count for messages: MB, or bytes below one MB."""
    return f"{n / (1 << 20):.1f} MB" if n >= 1 << 20 else f"{n} bytes"


def scan_suffix(name: str) -> str:
    """The scan suffix `name` ends with, or an UploadError saying it is not a scan."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise UploadError(f"{name}: not a scan; upload {ACCEPTED}")


def check_size(path: Path, name: str, limits: Limits) -> None:
    """Refuse a missing upload, or one larger than the limit (before reading any of it)."""
    if not path.is_file():
        raise UploadError(f"{name}: the upload is missing on the server; upload it again")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise UploadError(f"{name}: {_mb(size)}, over the upload limit of "
                          f"{_mb(limits.max_upload_bytes)} (namd serve --max-upload-mb)")


def unsafe_member(name: str) -> bool:
    """True for a zip entry name that would land outside the folder it is unpacked into."""
    path = PurePosixPath(name.replace("\\", "/"))
    first = path.parts[0] if path.parts else ""
    return path.is_absolute() or ".." in path.parts or (len(first) >= 2 and first[1] == ":")


def zip_members(archive: zipfile.ZipFile, name: str, limits: Limits) -> list[zipfile.ZipInfo]:
    """The zip's file entries, after refusing paths outside itself, links, encrypted entries,
    too many entries and a stated unpacked size over the limit."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise UploadError(f"{name}: {len(infos)} entries, over the limit of {limits.max_files} "
                          "files")
    for info in infos:
        if unsafe_member(info.filename):
            raise UploadError(f"{name}: entry {info.filename!r} points outside the zip: refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"{name}: entry {info.filename!r} is a symbolic link: refused")
        if info.flag_bits & 0x1:
            raise UploadError(f"{name}: entry {info.filename!r} is encrypted; zip the folder "
                              "without a password")
    total = sum(info.file_size for info in infos)
    if total > limits.max_unpacked_bytes:
        raise UploadError(f"{name}: unpacks to {_mb(total)}, over the limit of "
                          f"{_mb(limits.max_unpacked_bytes)}")
    return [info for info in infos if not info.is_dir()]


def _copy_capped(src, dst, budget: int, name: str, limits: Limits) -> int:
    """Copy one entry's stream, stopping when the zip's running total passes the limit."""
    while block := src.read(CHUNK):
        budget -= len(block)
        if budget < 0:
            raise UploadError(f"{name}: unpacks to more than {_mb(limits.max_unpacked_bytes)}, "
                              "the limit (its entries state smaller sizes)")
        dst.write(block)
    return budget


def extract_zip(path: Path, dest: Path, name: str, limits: Limits) -> None:
    """Unpack a checked zip into `dest` (see zip_members), counting the bytes as they come."""
    try:
        with zipfile.ZipFile(path) as archive:
            budget = limits.max_unpacked_bytes
            for info in zip_members(archive, name, limits):
                target = dest.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    budget = _copy_capped(src, dst, budget, name, limits)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error, lzma.LZMAError) as exc:
        raise UploadError(f"{name}: not a readable zip ({' '.join(str(exc).split())})") from None


def _single_image(folder: Path, name: str) -> Path | None:
    """The one NIfTI / MHA / MHD / NRRD file of an unpacked zip, or None (a DICOM folder)."""
    images = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)
              and not p.name.startswith(".") and "__MACOSX" not in p.parts]
    if len(images) > 1:
        raise UploadError(f"{name}: holds {len(images)} image files; upload one scan")
    return images[0] if images else None


def _renamed(message: str, names: dict[str, str]) -> str:
    """`message` on one line with each temporary path replaced by what the user uploaded."""
    for path in sorted(names, key=len, reverse=True):
        message = message.replace(path, names[path])
    return " ".join(message.split())


def open_upload(path: str | Path, workdir: Path, limits: Limits, name: str | None = None) -> Volume:
    """The scan of an upload, copied or unpacked into `workdir` (which the caller owns)."""
    path = Path(path)
    name = name or path.name
    suffix = scan_suffix(name)
    check_size(path, name, limits)
    target = workdir / (SCAN_DIR if suffix == ".zip" else f"{SCAN_DIR}{suffix}")
    try:
        if suffix == ".zip":
            target.mkdir()
            extract_zip(path, target, name, limits)
            return open_volume(_single_image(target, name) or target)
        shutil.copyfile(path, target)
        return open_volume(target)
    except (ValueError, OSError) as exc:
        raise UploadError(_renamed(str(exc), {str(target): name, str(workdir): name})) from None


@dataclass
class LoadedScan:
    """An open scan, the folder that holds its files, and a lock: a DICOM volume reads and
    caches slices on demand, and the page's events run in several threads."""

    volume: Volume
    workdir: Path
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ScanStore:
    """The last `capacity` uploaded scans by random token; older ones are closed and deleted."""

    def __init__(self, root: Path, limits: Limits, capacity: int = 4):
        self.root, self.limits, self.capacity = Path(root), limits, capacity
        self._scans: OrderedDict[str, LoadedScan] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, path: str | Path, name: str | None = None) -> tuple[str, LoadedScan]:
        """Open an upload (UploadError when it cannot be); its token and the scan."""
        self.root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=self.root, prefix="scan-"))
        try:
            scan = LoadedScan(open_upload(path, workdir, self.limits, name), workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        token = secrets.token_hex(16)
        with self._lock:
            self._scans[token] = scan
            while len(self._scans) > self.capacity:
                _, old = self._scans.popitem(last=False)
                shutil.rmtree(old.workdir, ignore_errors=True)
        return token, scan

    def get(self, token: str | None) -> LoadedScan:
        """The scan of a token, or an UploadError saying to upload one (again)."""
        with self._lock:
            if token and token in self._scans:
                self._scans.move_to_end(token)
                return self._scans[token]
        if not token:
            raise UploadError("no scan: upload a scan first")
        raise UploadError(f"the scan is no longer held (the server keeps the last {self.capacity}): "
                          "upload it again")

    def close(self) -> None:
        """Delete every scan's folder."""
        with self._lock:
            for scan in self._scans.values():
                shutil.rmtree(scan.workdir, ignore_errors=True)
            self._scans.clear()
