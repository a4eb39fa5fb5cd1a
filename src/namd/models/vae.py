"""The KL autoencoder of the nodule-aligned latent space (paper 3.2): a diffusers AutoencoderKL
built from the typed config, plus the conventions every later stage shares for moving crops in
and out of the latent space.

Conventions: crops in HU -> lung window -> [-1, 1] (namd.cohort.imaging.hu_to_unit), replicated to
`in_channels`; latents are the posterior mean (deterministic, so cached latents are stable),
multiplied by the stage's saved scale factor before diffusion.

Pretrained SD1.5 weights (paper 4.1.1) are read only from a local path: a diffusers folder, or a
single .safetensors file in either the diffusers or the original (CompVis/LDM) key layout. The
original layout is converted with diffusers' own key mapping against the config built here, so
nothing is fetched from a hub; pickle checkpoints (.ckpt/.pt/.bin) are refused.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from namd.cohort.imaging import hu_to_unit, unit_to_hu
from namd.config import VAEConfig
from namd.run.contract import DIFFUSERS_WEIGHTS, RunFileError
from namd.run.provenance import atomic_write_json, hash_files
from namd.run.readers import check_recorded_sha256, check_safetensors, read_json, reading

SCALE_FILE = "latent_scale.json"
MODEL_DIR = "autoencoder"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL of the configured size (spatial factor 2^(levels-1)),
    with the configured residual-block dropout and decoder output."""
    levels = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
    )
    set_dropout(vae, cfg.dropout)
    return set_output(vae, cfg.output)


def set_dropout(vae: AutoencoderKL, p: float) -> AutoencoderKL:
    """Dropout with probability p in every residual block (the authors' VAE: 0.2); diffusers'
    AutoencoderKL takes no dropout argument, but its ResnetBlock2D holds an nn.Dropout."""
    from diffusers.models.resnet import ResnetBlock2D

    for module in vae.modules():
        if isinstance(module, ResnetBlock2D):
            module.dropout.p = p
    return vae


def _tanh_output(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the decoder's output through tanh."""
    return torch.tanh(output)


def set_output(vae: AutoencoderKL, output: str) -> AutoencoderKL:
    """The decoder's output activation: 'tanh' (the authors' VAE) as a forward hook on the
    decoder, so the weights keep diffusers' and SD1.5's key names; 'identity' = none. The
    choice travels in latent_scale.json ("output"), read back by `load_trained_vae`."""
    if output not in ("identity", "tanh"):
        raise ValueError(f"vae.output must be 'identity' or 'tanh', got {output!r}")
    if output == "tanh" and not getattr(vae, "_namd_tanh", False):
        vae.decoder.register_forward_hook(_tanh_output)
        vae._namd_tanh = True
    return vae


def latent_shape(cfg: VAEConfig, crop_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latent of one crop: 64 x 64 -> 4 x 8 x 8 for the SD1.5 layout."""
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    return cfg.latent_channels, crop_size // factor, crop_size // factor


def to_network(hu: np.ndarray | torch.Tensor, window: tuple[float, float], channels: int) -> torch.Tensor:
    """HU crops (B, H, W) -> network input (B, channels, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(hu) if not torch.is_tensor(hu) else hu, dtype=torch.float32)
    x = hu_to_unit(x, window)
    return x.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()


def from_network(x: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Network output (B, C, H, W) in [-1, 1] -> HU crops (B, H, W) (channel mean)."""
    return unit_to_hu(x.float().mean(1), window)


@torch.no_grad()
def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean latents (unscaled) of network-range images."""
    return vae.encode(x).latent_dist.mean


@torch.no_grad()
def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from unscaled latents."""
    return vae.decode(z).sample


def save_trained_vae(vae: AutoencoderKL, out: Path, scale_factor: float, **extra) -> None:
    """Write the autoencoder (diffusers folder, safetensors), its latent scale factor and its
    decoder output activation."""
    vae.save_pretrained(Path(out) / MODEL_DIR, safe_serialization=True)
    output = "tanh" if getattr(vae, "_namd_tanh", False) else "identity"
    atomic_write_json(Path(out) / SCALE_FILE, {"scale_factor": float(scale_factor), "output": output, **extra})


def load_trained_vae(stage_dir: Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, float]:
    """The frozen VAE of a finished `namd train vae` stage and its scale factor (1 / latent std).

    The diffusion stages read the scale factor from here: nothing is copied by hand. Every
    file is checked before the network is built (RunFileError naming it when damaged).
    """
    stage_dir = Path(stage_dir)
    return load_autoencoder(stage_dir / MODEL_DIR, stage_dir, device, writer="vae")


def load_autoencoder(model_path: Path, meta_dir: Path, device: str | torch.device = "cpu",
                     writer: str | None = None) -> tuple[AutoencoderKL, float]:
    """The frozen AutoencoderKL saved in `model_path` (diffusers layout) with the scale factor
    and decoder output saved in `meta_dir`: a VAE stage's autoencoder/ (`load_trained_vae`) or
    an exported model folder's vae/. `writer` names what writes them again in errors."""
    scale = read_scale_factor(meta_dir)
    read_json(model_path / "config.json", writer)
    check_safetensors(model_path / DIFFUSERS_WEIGHTS, writer)
    with reading(model_path, writer):
        vae = AutoencoderKL.from_pretrained(model_path, local_files_only=True, use_safetensors=True)
    set_output(vae, read_output(meta_dir))
    vae.to(device).eval().requires_grad_(False)
    return vae, scale


def read_output(stage_dir: Path) -> str:
    """The decoder output activation a VAE stage saved ('identity' for stages saved before the
    field existed, which had none)."""
    path = Path(stage_dir) / SCALE_FILE
    value = read_json(path, "vae").get("output", "identity")
    if value not in ("identity", "tanh"):
        raise RunFileError(path, f"output {value!r} is not 'identity' or 'tanh'", writer="vae")
    return value


def read_scale_factor(stage_dir: Path) -> float:
    """The latent scale factor a VAE stage saved (a positive number)."""
    path = Path(stage_dir) / SCALE_FILE
    value = read_json(path, "vae", keys=("scale_factor",))["scale_factor"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise RunFileError(path, f"scale_factor {value!r} is not a positive number", writer="vae")
    return float(value)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (pickle formats are refused, never opened)."""
    from safetensors.torch import load_file

    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"vae.pretrained: {path} is a pickle checkpoint; namd never unpickles "
                         "files. Convert it once to .safetensors (e.g. with safetensors.torch.save_file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"vae.pretrained: {path} must be a diffusers folder or a .safetensors file")
    return load_file(str(path))


def _weights_file(folder: Path) -> Path:
    """The VAE weights of a diffusers folder: the VAE's own folder or a pipeline's vae/."""
    for candidate in (folder / DIFFUSERS_WEIGHTS, folder / "vae" / DIFFUSERS_WEIGHTS):
        if candidate.is_file():
            return candidate
    pickled = sorted(p.name for p in [*folder.glob("*.bin"), *folder.glob("vae/*.bin")])
    hint = f" (found only pickle files {pickled}: convert them to safetensors)" if pickled else ""
    raise FileNotFoundError(f"vae.pretrained: no {DIFFUSERS_WEIGHTS} in {folder} or {folder}/vae{hint}")


def read_pretrained_state_dict(source: str | Path, vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """Diffusers-layout VAE weights from a local folder or single file (either layout).

    Original-layout keys (`encoder.down.0.block.0...`, optionally prefixed `first_stage_model.`
    or `vae.` as in a full SD checkpoint) are converted with diffusers' mapping using the
    config of `vae`, the network built from our own config: no config is downloaded.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"vae.pretrained: {path} not found (weights are read only from "
                                "local paths; nothing is downloaded)")
    state = _read_safetensors(_weights_file(path) if path.is_dir() else path)
    if any(k.startswith("encoder.down_blocks.") for k in state):
        return state
    if not any(".down.0." in k or k.startswith("encoder.down.0.") for k in state):
        raise ValueError(f"vae.pretrained: {path} holds no VAE weights in the diffusers or the "
                         "original (LDM) layout")
    return convert_ldm_vae_checkpoint(state, vae.config)


def load_pretrained_weights(vae: AutoencoderKL, source: str | Path) -> AutoencoderKL:
    """Overwrite `vae` with local SD1.5 weights; every key and shape must match the config."""
    state = read_pretrained_state_dict(source, vae)
    own = vae.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"vae.pretrained: {source} does not fit the configured network: "
                         f"{len(missing)} missing key(s) (e.g. {missing[:3]}), {len(unexpected)} "
                         f"unexpected (e.g. {unexpected[:3]}); SD1.5 needs the paper preset's vae sizes")
    for key, tensor in own.items():
        if state[key].shape != tensor.shape:
            raise ValueError(f"vae.pretrained: {source}: {key} has shape {tuple(state[key].shape)}, "
                             f"the configured network needs {tuple(tensor.shape)} (SD1.5 weights need "
                             "the paper preset: block_out_channels 128,256,512,512, in_channels 3)")
    vae.load_state_dict(state, strict=True)
    return vae


def build_vae_from_config(cfg: VAEConfig) -> AutoencoderKL:
    """The configured network, with local pretrained weights when `cfg.pretrained` names them."""
    from namd.models.foundation import resolve

    vae = build_vae(cfg)
    return load_pretrained_weights(vae, resolve(cfg.pretrained)) if cfg.pretrained else vae


def vae_fingerprint(vae_dir: Path) -> str:
    """SHA-256 of a VAE stage's autoencoder folder and scale factor: it changes when the VAE is
    retrained. Damage is told apart first: weights whose sha256 differs from the one the stage
    recorded are a RunFileError naming the file (never "the VAE changed after ...")."""
    vae_dir = Path(vae_dir)
    files = [p for p in (vae_dir / MODEL_DIR).glob("*") if p.is_file()] + [vae_dir / SCALE_FILE]
    missing = [p for p in [*files, vae_dir / MODEL_DIR] if not p.exists()]
    if missing:
        raise RunFileError(missing[0], f"missing: {vae_dir} is not a finished `namd train vae` "
                           "stage", writer="vae")
    for path in files:
        if path.suffix == ".safetensors":
            check_recorded_sha256(path, "vae")
    states = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))
    return _fingerprint_of(states)


@lru_cache(maxsize=16)
def _fingerprint_of(states: tuple[tuple[str, int, int], ...]) -> str:
    """vae_fingerprint's digest, once per process per state (path, size, mtime) of the files:
    every `NAMDPipeline.from_run` and sample stage compares it, the files rarely change."""
    digest = hashlib.sha256()
    hash_files([Path(s[0]) for s in states], digest)
    return digest.hexdigest()
