"""The latent cache: every crop of a cohort encoded once by the frozen VAE, for every rotation.

Both diffusion stages train on latents of the frozen VAE (paper 3.3.2), and Appendix B augments
with rotations of 45, 90, 135 and 180 degrees. A latent of a rotated crop is not a rotated
latent (the VAE is not rotation-equivariant, and 45/135 degrees have no exact latent-space
counterpart), so the cache holds the latent of each rotated *image*: shape (R, N, C, h, w) for
R = len(namd.cohort.imaging.ROTATIONS) rotations (0 included) and N crops, row n = crop_index n.
Training draws one rotation per item, the same one for the baseline and the follow-up of a
pair; validation uses rotation 0. So only what a stage reads is encoded: every rotation of the
training split's crops, rotation 0 of the validation split's, and nothing of the test split's
(the samplers encode their baselines themselves); the rest is NaN, and reading it is an error.
The test split is 47% of the demo cohort's crops: the cache takes 54% fewer encoder passes.

Where: RUN/cache/latents_<vae folder>.safetensors (e.g. latents_vae.safetensors), one file per
VAE variant, shared by the prior and cond stages (and the compared methods on it). What is
stored: the VAE's posterior means, unscaled; the VAE's saved scale factor is applied on read.
Validity: the file records a fingerprint (SHA-256 over the VAE folder's weights, config and
scale factor, the cohort's manifest (its splits included), meta and image chunks, the HU window,
the input channels and the rotations); any change, such as a retrained VAE, rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from namd.cohort.imaging import ROTATIONS, rotate
from namd.cohort.store import Cohort
from namd.models.vae import (
    encode,
    load_trained_vae,
    read_scale_factor,
    to_network,
    vae_fingerprint,
)
from namd.run.contract import RunFileError
from namd.run.provenance import atomic_write_bytes, hash_files, progress
from namd.run.readers import load_safetensors, reading

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
CACHE_VERSION = "2"  # 2: only the rotations a stage reads (see above)


def cache_path(run_path: Path, vae_dir_name: str) -> Path:
    """RUN/cache/latents_<vae folder>.safetensors."""
    return Path(run_path) / CACHE_DIR / f"latents_{vae_dir_name}.safetensors"


def cohort_fingerprint(cohort_dir: Path) -> str:
    """SHA-256 of a cohort's meta, manifest and image chunks."""
    cohort_dir = Path(cohort_dir)
    meta = [cohort_dir / "cohort.json", cohort_dir / "manifest.csv"]
    for path in meta:
        if not path.is_file():
            raise RunFileError(path, "missing", writer="cohort")
    digest = hashlib.sha256()
    hash_files([*meta, *(cohort_dir / "images").glob("*.npy")], digest)
    return digest.hexdigest()


@dataclass
class LatentStore:
    """Cached latents of a cohort: `latents` (R, N, C, h, w) unscaled, row = crop_index."""

    latents: torch.Tensor
    rotations: tuple[int, ...]
    scale_factor: float
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return tuple(self.latents.shape[2:])  # type: ignore[return-value]

    def all_rotations(self, crop_indices: np.ndarray | list[int]) -> torch.Tensor:
        """Scaled latents of the given crops under every rotation: (n, R, C, h, w); the rotated
        slots of a crop outside the training split are NaN (pick_rotation refuses them)."""
        idx = torch.tensor(np.asarray(crop_indices, dtype=np.int64))  # a copy: the index may be read-only
        out = (self.latents[:, idx] * self.scale_factor).transpose(0, 1).contiguous()
        return self._encoded(idx, out[:, self.rotations.index(0)], out)

    def upright(self, crop_indices: np.ndarray | list[int]) -> torch.Tensor:
        """Scaled latents of the unrotated crops: (n, C, h, w)."""
        idx = torch.tensor(np.asarray(crop_indices, dtype=np.int64))  # a copy: the index may be read-only
        out = self.latents[self.rotations.index(0), idx] * self.scale_factor
        return self._encoded(idx, out, out)

    @staticmethod
    def _encoded(idx: torch.Tensor, upright: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out`, unless a crop was not encoded (its upright latent NaN: the test split's): then
        refused, never handed out as NaN."""
        missing = torch.isnan(upright.flatten(1)[:, 0])
        if bool(missing.any()):
            raise ValueError(f"crop {int(idx[missing][0])} is not in the latent cache: it holds the "
                             "training and validation splits only (the test split is never trained on)")
        return out


def rotations_needed(cohort: Cohort, rotations: tuple[int, ...]) -> np.ndarray:
    """(R, N) bool: which rotation of which crop a stage reads: every rotation of a training
    crop, rotation 0 of a validation crop, none of a test crop."""
    split = cohort.manifest["split"].to_numpy()
    return np.stack([(split == "train") | ((split == "val") & (angle == 0)) for angle in rotations])


@torch.no_grad()
def encode_cohort(cohort: Cohort, vae: torch.nn.Module, window: tuple[float, float],
                  rotations: tuple[int, ...], batch: int, device: torch.device | str) -> torch.Tensor:
    """Posterior-mean latents (R, N, C, h, w) (unscaled) of the crops and rotations a stage reads
    (rotations_needed), NaN elsewhere; `batch` crops per encoder call."""
    channels = int(vae.config.in_channels)
    needed = rotations_needed(cohort, rotations)
    jobs = [(r, np.flatnonzero(needed[r])) for r in range(len(rotations))]
    calls = [(r, rows[i:i + batch]) for r, rows in jobs for i in range(0, len(rows), batch)]
    if not calls:
        raise ValueError(f"cohort {cohort.path} holds no training or validation crops to encode")
    read = np.flatnonzero(needed.any(axis=0))
    hu, at = cohort.images(read), np.full(len(cohort), -1)  # each crop read once, not per rotation
    at[read] = np.arange(len(read))
    out: torch.Tensor | None = None
    for r, rows in progress(calls, desc="encode latents", unit="batch"):
        x = to_network(hu[at[rows]], window, channels).to(device)
        xr = x if rotations[r] == 0 else rotate(x, [rotations[r]] * len(x))
        z = encode(vae, xr).float().cpu()
        if out is None:
            out = torch.full((len(rotations), len(cohort), *z.shape[1:]), float("nan"))
        out[r, torch.from_numpy(rows)] = z
    return out


def _fingerprint(vae_fp: str, cohort_fp: str, window: tuple[float, float],
                 rotations: tuple[int, ...]) -> str:
    """One key over everything the cached latents depend on."""
    text = json.dumps({"version": CACHE_VERSION, "vae": vae_fp, "cohort": cohort_fp,
                       "window": list(window), "rotations": list(rotations)})
    return hashlib.sha256(text.encode()).hexdigest()


def _payload_sha256(latents: torch.Tensor) -> str:
    """sha256 of the cached latents' bytes: a cache whose values were changed after it was
    written (a flipped byte parses) is rebuilt, never trained on."""
    return hashlib.sha256(latents.contiguous().numpy().tobytes()).hexdigest()


def _payload_ok(path: Path, latents: torch.Tensor) -> bool:
    """Whether the latents match the sha256 their cache recorded (a cache written before namd
    recorded it has none and is taken as it is)."""
    with safe_open(str(path), framework="pt") as fh:
        recorded = (fh.metadata() or {}).get("sha256")
    return recorded is None or recorded == _payload_sha256(latents)


def _read_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a cache file, or None when unreadable (then rebuilt)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("fingerprint")
    except Exception:  # noqa: BLE001 - a corrupt cache is simply rebuilt
        return None


def load_or_build(path: Path, cohort_dir: Path, vae_dir: Path, window: tuple[float, float],
                  batch: int = 64, device: torch.device | str = "cpu",
                  rotations: tuple[int, ...] = ROTATIONS) -> LatentStore:
    """The cohort's latents under the VAE of `vae_dir`: read from `path` when its fingerprint
    matches, otherwise encoded now and written there (atomically). A damaged cache is
    rebuilt; a damaged VAE or cohort is a RunFileError naming the file."""
    if 0 not in rotations:
        raise ValueError("the latent cache needs rotation 0 (validation and sampling use it)")
    vae_dir, path = Path(vae_dir), Path(path)
    key = _fingerprint(vae_fingerprint(vae_dir), cohort_fingerprint(cohort_dir), tuple(window),
                       tuple(rotations))
    scale = read_scale_factor(vae_dir)
    stored = _read_fingerprint(path) if path.is_file() else None
    if stored == key:
        with reading(path, "cache"):
            cached = load_safetensors(path, "cache")["latents"]
        if _payload_ok(path, cached):
            log.info("latent cache %s is up to date", path)
            return LatentStore(cached, tuple(rotations), scale, key)
        stored = "damaged"
    if path.is_file():
        log.info("latent cache %s is %s: rebuilding", path, "unreadable" if stored is None else
                 "damaged (its latents differ from their recorded sha256)" if stored == "damaged"
                 else "stale (VAE, cohort or settings changed)")
    vae, scale = load_trained_vae(vae_dir, device)
    latents = encode_cohort(Cohort(cohort_dir), vae, tuple(window), tuple(rotations), batch, device)
    meta = {"fingerprint": key, "sha256": _payload_sha256(latents),
            "rotations": ",".join(map(str, rotations)),
            "vae_dir": str(vae_dir), "cohort_dir": str(cohort_dir), "unscaled": "true"}
    atomic_write_bytes(path, save({"latents": latents}, metadata=meta))
    return LatentStore(latents, tuple(rotations), scale, key)
