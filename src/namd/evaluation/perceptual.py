"""Perceptual distances of generated follow-ups to the real ones (paper 4.1.2, Table 1), from
networks this machine has, never downloaded and never through torchvision.

- `evaluator_feature_distance`, always computed: per crop, 1 - cosine similarity of the run
  evaluator's penultimate features (the final-layer-normed [CLS] token that its classification
  head reads) of the generated crop and of its real follow-up. An LPIPS-like distance in the
  feature space of the network that judges Table 1: LPIPS compares channel-normalised
  activations of an ImageNet network; here the one vector the malignancy decision is made from
  is unit-normalised (so the distance ignores the token's overall scale, as LPIPS does each
  layer's) and compared, 0 for identical features, 1 for orthogonal ones, at most 2. Chosen
  over a mean over hidden layers because `namd evaluate` already holds these features for every
  crop: no second pass through the ViT.
- LPIPS (`namd.models.lpips`, VGG-16 with the lpips v0.1 heads; the network VAE training's
  L_LPIPS uses) when a local safetensors file is configured: `eval.lpips_weights`, else the
  file of `vae.lpips_weights` (one network, one file: a run that trains with L_LPIPS reports
  LPIPS without another setting; set `eval.lpips_weights` to judge with another file).
- Inception-v3 pool features (2048-d, `namd.models.inception`, pytorch-fid's FID network) when
  `eval.fid_weights` names a local safetensors file; `namd.evaluation.quality` turns them into
  FID. No fallback: the FID file is used for nothing else.

Crops go in as both networks expect: HU clipped to the lung window and scaled to [-1, 1]
(`hu_to_unit`, the same scaling every network of the run sees), the one channel replicated to
three (ImageNet networks; the lpips and pytorch-fid conventions for grey images); LPIPS at the
crop's own size (as in VAE training), Inception resized to 299 (inside the network, as
pytorch-fid). Without a file the measure is the string "not computed: <why>".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from namd.config import NamdConfig
    from namd.models.inception import FIDInception
    from namd.models.lpips import LPIPSNet

LPIPS_BACKBONE = "vgg16 (lpips v0.1 heads)"
FID_BACKBONE = "inception-v3 (pytorch-fid 2015-12-05 weights)"
LPIPS_UNSET = ("not computed: eval.lpips_weights is not set, nor vae.lpips_weights (a local "
               "safetensors file; docs/paper-preset.md, 'LPIPS weights')")
FID_UNSET = ("not computed: eval.fid_weights is not set (a local safetensors file; "
             "docs/paper-preset.md, 'FID weights')")


def evaluator_feature_distance(features: np.ndarray, real_features: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of each generated crop's evaluator features (N, K, d) with its real
    follow-up's (N, d): (N, K), in [0, 2]; a zero vector (no direction) counts as orthogonal."""
    features, real_features = np.asarray(features, np.float64), np.asarray(real_features, np.float64)
    if features.ndim != 3 or real_features.shape != (features.shape[0], features.shape[2]):
        raise ValueError(f"evaluator features {features.shape} do not match the real follow-ups' "
                         f"{real_features.shape}: need (N, K, d) and (N, d)")

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    cosine = np.einsum("nkd,nd->nk", unit(features), unit(real_features))
    return np.clip(1.0 - cosine, 0.0, 2.0)


def weights_of(config: NamdConfig | None) -> dict[str, tuple[str, str] | None]:
    """The (file, config field) each network is read from, None when none is set."""
    if config is None:
        return {"lpips": None, "fid": None}
    lpips = (("eval.lpips_weights", config.eval.lpips_weights) if config.eval.lpips_weights
             else ("vae.lpips_weights", config.vae.lpips_weights))
    return {"lpips": (lpips[1], lpips[0]) if lpips[1] else None,
            "fid": (config.eval.fid_weights, "eval.fid_weights") if config.eval.fid_weights else None}


def perceptual_status(config: NamdConfig | None) -> dict[str, str | None]:
    """Why LPIPS / FID will not be computed for this config (None when a file is configured;
    a configured file that is missing or damaged is an error when loaded, not a status)."""
    files = weights_of(config)
    return {"lpips": None if files["lpips"] else LPIPS_UNSET,
            "fid": None if files["fid"] else FID_UNSET}


@dataclass
class PerceptualNets:
    """The networks of one evaluation, loaded once for every row; `status` holds why a measure
    is not computed (None for the loaded ones)."""

    status: dict[str, str | None]
    lpips: LPIPSNet | None = None
    inception: FIDInception | None = None
    device: str = "cpu"
    batch: int = 64
    real_cache: dict[str, np.ndarray] = field(default_factory=dict)  # Inception features by crops


def load_networks(config: NamdConfig | None, device: str | torch.device | None = None,
                  batch: int = 64) -> PerceptualNets:
    """The configured LPIPS and FID networks on `device` (default: the run's default device),
    or a one-line error naming the field and file when a configured file is missing or damaged."""
    status = perceptual_status(config)
    files = weights_of(config)
    nets = PerceptualNets(status, batch=max(1, int(batch)))
    if files["lpips"] is None and files["fid"] is None:
        return nets
    from namd.models.device import resolve_device

    dev = resolve_device(device)
    nets.device = str(dev)
    if files["lpips"] is not None:
        from namd.models.lpips import load_lpips

        nets.lpips = load_lpips(*files["lpips"]).to(dev)
    if files["fid"] is not None:
        from namd.models.inception import load_inception

        nets.inception = load_inception(*files["fid"]).to(dev)
    return nets


def _rgb(hu: np.ndarray, window: tuple[float, float], device: str) -> torch.Tensor:
    """HU crops (B, H, W) -> (B, 3, H, W) float tensor in [-1, 1] on `device`."""
    import torch

    from namd.cohort.imaging import hu_to_unit

    x = hu_to_unit(torch.as_tensor(np.asarray(hu), dtype=torch.float32), window)
    return x[:, None].expand(-1, 3, -1, -1).to(device)


def lpips_distances(nets: PerceptualNets, generated: np.ndarray, real: np.ndarray,
                    window: tuple[float, float]) -> np.ndarray:
    """LPIPS of every generated crop (N, K, H, W) to its real follow-up (N, H, W): (N, K)."""
    import torch

    if nets.lpips is None:
        raise ValueError(f"LPIPS network not loaded ({nets.status['lpips']})")
    n, k = generated.shape[:2]
    out = np.empty((n, k))
    with torch.no_grad():
        for start in range(0, n, nets.batch):
            rows = slice(start, start + nets.batch)
            ref = nets.lpips.features(_rgb(real[rows], window, nets.device))  # once for K runs
            for j in range(k):
                gen = nets.lpips.features(_rgb(generated[rows, j], window, nets.device))
                out[rows, j] = nets.lpips.distance(gen, ref).double().cpu().numpy()
    return out


def inception_features(nets: PerceptualNets, hu: np.ndarray,
                       window: tuple[float, float]) -> np.ndarray:
    """FID Inception pool features of crops (n, H, W): (n, 2048), float64."""
    import torch

    if nets.inception is None:
        raise ValueError(f"FID Inception not loaded ({nets.status['fid']})")
    hu = np.asarray(hu)
    parts = []
    with torch.no_grad():
        for start in range(0, len(hu), nets.batch):
            x = _rgb(hu[start:start + nets.batch], window, nets.device)
            parts.append(nets.inception(x).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.empty((0, 2048))


def _real_features(nets: PerceptualNets, real: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Inception features of the real follow-ups, computed once per evaluation (every row is
    compared with the same crops)."""
    real = np.ascontiguousarray(real)
    key = hashlib.blake2b(real.tobytes(), digest_size=16).hexdigest() + f"{real.shape}{window}"
    if key not in nets.real_cache:
        nets.real_cache[key] = inception_features(nets, real, window)
    return nets.real_cache[key]


def perceptual_measures(generated: np.ndarray, real: np.ndarray, window: tuple[float, float],
                        features: np.ndarray, real_features: np.ndarray,
                        nets: PerceptualNets | None = None) -> dict[str, Any]:
    """The perceptual measures of one generated variant (N, K, H, W) against the real
    follow-ups (N, H, W): "evaluator_feature_distance" (N, K) always; "lpips" (N, K) or its
    "not computed" string; "inception" as (generated (N, K, 2048), real (N, 2048)) or its
    string (quality.image_quality turns them into the metrics.json block)."""
    nets = nets if nets is not None else load_networks(None)
    out: dict[str, Any] = {"evaluator_feature_distance":
                           evaluator_feature_distance(features, real_features)}
    out["lpips"] = (lpips_distances(nets, generated, real, window) if nets.lpips is not None
                    else nets.status["lpips"])
    if nets.inception is None:
        out["inception"] = nets.status["fid"]
        return out
    n, k = generated.shape[:2]
    flat = np.asarray(generated).reshape(n * k, *generated.shape[2:])
    gen = inception_features(nets, flat, window).reshape(n, k, -1)
    out["inception"] = (gen, _real_features(nets, real, window))
    return out
