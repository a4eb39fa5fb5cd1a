"""K virtual follow-ups per nodule (paper 3.3.2 'At inference', Appendix D): DDIM, 50 steps,
eta = 0, K = 20, guidance 1, from the conditional U-Net of a run.

Throughput: the VAE latent of each baseline and its context C are computed once per nodule;
then all K x N samples are drawn in large batches (up to sampling.max_batch latents per U-Net
call), instead of one seed at a time over the test set with everything recomputed.

Reproducibility: the initial noise of sample k of nodule i comes from its own generator, seeded
by (sampling.seed, the nodule's pair id, k); with eta = 0 the DDIM and DPM-Solver++ updates are
deterministic after that, and with eta > 0 the per-step DDIM noise is drawn from the same
per-sample generator and handed to the scheduler (`variance_noise`). So sample k of nodule i is
the same whatever the batch size and whichever other nodules are sampled with it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

import namd.models.context as context_module
import namd.models.context_factory as context_factory
from namd.cohort.imaging import hu_to_unit, unit_to_hu
from namd.cohort.store import Cohort
from namd.config import NamdConfig, SamplingConfig, TextConfig
from namd.config.diffusion import check_sampling_steps
from namd.models.context_factory import ENCODER_FILE, PROMPTS_FILE
from namd.models.schedules import load_scheduler_config, model_output, sampling_scheduler
from namd.models.token_text import TOKEN_KIND, load_token_encoder
from namd.models.unet import load_unet
from namd.models.vae import (
    decode,
    encode,
    from_network,
    load_trained_vae,
    to_network,
    vae_fingerprint,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, progress
from namd.run.readers import load_safetensors, read_json, reading

log = logging.getLogger(__name__)


def unet_latent_shape(unet: torch.nn.Module) -> tuple[int, int, int]:
    """(C, h, w) of the latent a conditional U-Net denoises (its output channels and size)."""
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return int(unet.config.out_channels), int(size), int(size)


def sample_seed(seed: int, key: str, k: int) -> int:
    """The seed of sample k of the nodule `key` (a pair id): independent of batching."""
    digest = hashlib.sha256(f"{seed}:{key}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Conditioning:
    """What sampling needs per nodule, computed once: keys (N pair ids), baseline (N, C, h, w)
    scaled latents or None (unconditional), context C (N, m, D) and the null context (m, D)."""

    keys: list[str]
    baseline: torch.Tensor | None
    context: torch.Tensor
    null: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)


def seeded_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard normal draw per sample, each from its own generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.inference_mode()
def denoise(unet: torch.nn.Module, train_schedule: dict[str, Any], cfg: SamplingConfig,
            x: torch.Tensor, baseline: torch.Tensor | None, context: torch.Tensor,
            null: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Run the sampler from initial noise `x` to clean latents for one batch.

    With guidance_scale g != 1: eps = eps(null) + g (eps(C) - eps(null)), both halves in one
    U-Net call (classifier-free guidance; meaningful only after training with condition dropout).
    """
    sched = sampling_scheduler(train_schedule, cfg)
    guided = cfg.guidance_scale != 1.0
    if guided:
        uncond = null.to(context).expand_as(context)
        both_ctx = torch.cat([uncond, context])
        both_base = None if baseline is None else torch.cat([baseline, baseline])
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        if guided:
            eps_u, eps_c = model_output(unet, torch.cat([inp, inp]), t, both_ctx, both_base).chunk(2)
            eps = eps_u + cfg.guidance_scale * (eps_c - eps_u)
        else:
            eps = model_output(unet, inp, t, context, baseline)
        extra: dict[str, Any] = {}
        if cfg.scheduler == "ddim":
            extra["eta"] = cfg.eta
            if cfg.eta > 0:
                extra["variance_noise"] = seeded_noise(generators, tuple(x.shape[1:])).to(x)
        x = sched.step(eps.to(x.dtype), t, x, **extra).prev_sample
    return x


@torch.inference_mode()
def draw_latents(keys: Sequence[str], cfg: SamplingConfig, latent_shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device | str,
                 run: Callable[[torch.Tensor, torch.Tensor, list[torch.Generator]], torch.Tensor],
                 per_call: int, show_progress: bool = True) -> torch.Tensor:
    """K samples per nodule, (N, K, C, h, w) float32 on the CPU, `per_call` at a time: each
    sample's initial noise from its own generator (sample_seed(cfg.seed, key, k)), then
    `run(x, nodule indices, generators)` takes the batch to clean latents. Every method's
    sampler draws through here, so sample k of a nodule never depends on the batch."""
    jobs = [(i, k) for i in range(len(keys)) for k in range(cfg.k)]
    out = torch.empty((len(keys), cfg.k, *latent_shape), dtype=torch.float32)
    chunks = [jobs[s:s + per_call] for s in range(0, len(jobs), per_call)]
    for chunk in progress(chunks, desc="sample", unit="batch", disable=None if show_progress else True):
        nodule = torch.tensor([i for i, _ in chunk])
        replica = torch.tensor([k for _, k in chunk])
        gens = [torch.Generator().manual_seed(sample_seed(cfg.seed, keys[i], k)) for i, k in chunk]
        x = seeded_noise(gens, latent_shape).to(device, dtype)
        out[nodule, replica] = run(x, nodule, gens).float().cpu()
    return out


@torch.inference_mode()
def sample_latents(unet: torch.nn.Module, train_schedule: dict[str, Any], cond: Conditioning,
                   cfg: SamplingConfig, latent_shape: tuple[int, int, int],
                   device: torch.device | str = "cpu", show_progress: bool = True) -> torch.Tensor:
    """K samples per nodule from a conditional U-Net: (N, K, C, h, w) scaled latents, at most
    cfg.max_batch latents per U-Net call (half as many samples with guidance, which needs two)."""
    dtype = next(unet.parameters()).dtype

    def run(x: torch.Tensor, nodule: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        base = None if cond.baseline is None else cond.baseline[nodule].to(device, dtype)
        return denoise(unet, train_schedule, cfg, x, base, cond.context[nodule].to(device, dtype),
                       cond.null.to(device, dtype), gens)

    per_call = max(1, cfg.max_batch // (2 if cfg.guidance_scale != 1.0 else 1))
    return draw_latents(cond.keys, cfg, latent_shape, dtype, device, run, per_call, show_progress)


def finished_stage(run: RunDir, folder: str, config: NamdConfig) -> Path:
    """RUN/<folder> for a sampler to read: finished (else a RunFileError on its run_info.json)
    and trained under a config that agrees with `config` (RunDir.agree)."""
    path = run.require(folder, "sample")
    if not run.is_done(folder):
        raise RunFileError(path / RUN_INFO, "missing or not complete: the stage did not finish")
    run.agree(config, folder)
    return path


@dataclass
class PixelConditioning:
    """A pixel-space method's per-nodule input: keys (N pair ids) and the baselines in the HU
    window's [-1, 1] units, (N, 1, H, W) (the record unused: image only)."""

    keys: list[str]
    baseline: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of(cls, keys: Sequence[str], baselines_hu: np.ndarray,
           window: tuple[float, float]) -> PixelConditioning:
        """The baselines (N, H, W) HU mapped to window units."""
        crops = torch.from_numpy(np.asarray(baselines_hu, dtype=np.float32))
        return cls(list(keys), hu_to_unit(crops, window)[:, None].float().contiguous())


def pixels_to_hu(images: torch.Tensor, window: tuple[float, float]) -> np.ndarray:
    """(M, 1, H, W) window units -> (M, H, W) float32 HU (clipped to the window)."""
    return unit_to_hu(images[:, 0].float().cpu(), window).numpy().astype(np.float32)


@torch.inference_mode()
def decode_to_hu(vae: torch.nn.Module, latents: torch.Tensor, scale_factor: float,
                 window: tuple[float, float], batch: int, device: torch.device | str = "cpu") -> np.ndarray:
    """Scaled latents (M, C, h, w) -> crops in HU (M, H, W) float32, `batch` at a time."""
    parts = []
    for s in range(0, len(latents), batch):
        z = latents[s:s + batch].to(device, next(vae.parameters()).dtype) / scale_factor
        parts.append(from_network(decode(vae, z), window).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)


@torch.inference_mode()
def encode_hu(vae: torch.nn.Module, crops: np.ndarray, scale_factor: float,
              window: tuple[float, float], batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Crops in HU (M, H, W) -> scaled posterior-mean latents (M, C, h, w) on the CPU."""
    channels = int(vae.config.in_channels)
    parts = [encode(vae, to_network(crops[s:s + batch], window, channels).to(device)).float().cpu()
             for s in range(0, len(crops), batch)]
    return torch.cat(parts) * scale_factor


class Sampler(Protocol):
    """What every method's trained model offers the sample stage and NAMDPipeline (its table
    entry's `sampler` loads one): conditioning computed once per nodule, K latents per nodule
    drawn per seed (sample k of nodule i from sample_seed(seed, key, k), whatever the batch),
    and their decoding to HU; `vae` and `latent_shape` for the pipeline's checks."""

    vae: torch.nn.Module

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> Any: ...

    def generate(self, cond: Any, cfg: SamplingConfig, show_progress: bool = True) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray: ...


class FollowUpSampler:
    """The conditional model of a run, ready to draw virtual follow-ups: U-Net, frozen VAE and
    scale factor, context encoder with its trained soft prompts (or the null context)."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, scale_factor: float,
                 encoder: context_module.ContextEncoder, null_context: bool,
                 train_schedule: dict[str, Any], window: tuple[float, float],
                 device: torch.device | str = "cpu"):
        self.unet, self.vae, self.scale = unet, vae, scale_factor
        self.encoder, self.null_only = encoder, null_context
        self.schedule, self.window, self.device = train_schedule, window, device
        self.condition_dropout = 0.0

    @classmethod
    def from_run(cls, run: RunDir, dirs: dict[str, str], config: NamdConfig,
                 device: torch.device | str = "cpu") -> FollowUpSampler:
        """Load the cond stage and the VAE it was trained on; refuses a VAE changed since.

        A missing or damaged file is a RunFileError naming it; the VAE is read (and so checked)
        before its fingerprint is compared, so damage is never mistaken for a retrained VAE."""
        cond_dir, vae_dir = run.require(dirs["cond"], "sample"), run.require(dirs["vae"], "sample")
        if not run.is_done(dirs["cond"]):
            raise RunFileError(cond_dir / RUN_INFO, "missing or not complete: the stage did not finish")
        for stage in (dirs["vae"], dirs["cond"]):  # the config means what they were trained under
            run.agree(config, stage)
        info = read_json(cond_dir / RUN_INFO)
        schedule = load_scheduler_config(cond_dir)
        unet = load_unet(cond_dir, device)
        vae, scale = load_trained_vae(vae_dir, device)
        if info.get("vae_fingerprint") and info["vae_fingerprint"] != vae_fingerprint(vae_dir):
            raise ValueError(f"{vae_dir} changed after {cond_dir} was trained on it; retrain "
                             "prior and cond (namd train prior/cond --overwrite)")
        encoder, null = load_context_encoder(cond_dir, device)
        sampler = cls(unet, vae, scale, encoder, null or config.sampling.drop_context, schedule,
                      tuple(config.data.window_hu), device)
        sampler.condition_dropout = float(info.get("condition_dropout") or 0.0)
        return sampler

    @property
    def train_timesteps(self) -> int:
        """T of the schedule the U-Net was trained with (its stage's scheduler_config.json)."""
        return int(self.schedule.get("num_train_timesteps", 1000))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the follow-up latent."""
        return unet_latent_shape(self.unet)

    def conditioning(self, keys: Sequence[str], baselines_hu: np.ndarray, ehrs: Sequence,
                     batch: int = 16) -> Conditioning:
        """Baseline latents and contexts, each computed once per nodule."""
        z1 = encode_hu(self.vae, baselines_hu, self.scale, self.window, batch, self.device)
        with torch.no_grad():  # an empty-prompt null context runs the encoder
            null = self.encoder.null_context(1, device="cpu")[0]
        if self.null_only:
            ctx = null.expand(len(keys), -1, -1)
        else:
            ctx = context_module.ContextCache(self.encoder, batch)(list(ehrs), keys=list(keys)).cpu()
        return Conditioning(list(keys), z1, ctx, null)

    def generate(self, cond: Conditioning, cfg: SamplingConfig, show_progress: bool = True) -> torch.Tensor:
        """(N, K, C, h, w) latents of the virtual follow-ups; steps outside the stage's saved
        schedule are refused before the first U-Net call."""
        check_sampling_steps(cfg, self.train_timesteps)
        if cfg.guidance_scale != 1.0 and self.null_only:
            log.warning("guidance_scale %.2f has no effect: this model's context is always null",
                        cfg.guidance_scale)
        elif cfg.guidance_scale != 1.0 and self.condition_dropout == 0:
            log.warning("guidance_scale %.2f with a model trained without condition dropout: the "
                        "null-context prediction was never trained (set diffusion.condition_dropout)",
                        cfg.guidance_scale)
        return sample_latents(self.unet, self.schedule, cond, cfg, self.latent_shape,
                              self.device, show_progress)

    def decode(self, latents: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(M, C, h, w) latents -> (M, H, W) crops in HU."""
        return decode_to_hu(self.vae, latents, self.scale, self.window, batch, self.device)


def load_context_encoder(cond_dir: Path, device: torch.device | str = "cpu") -> tuple[context_module.ContextEncoder, bool]:
    """The cond stage's context encoder (its saved text config) with the trained soft prompts,
    and whether the stage was trained with the null context."""
    spec_path, prompts_path = Path(cond_dir) / ENCODER_FILE, Path(cond_dir) / PROMPTS_FILE
    spec = read_json(spec_path, "cond", keys=("text", "dim", "n_tokens"))
    prompts = load_safetensors(prompts_path, "cond")
    with reading(spec_path, "cond"):
        text = TextConfig.model_validate(spec["text"])
    if spec.get("kind") == TOKEN_KIND:  # the SD1.5 row's frozen text path: nothing trained
        with reading(spec_path, "cond"):
            encoder: context_module.ContextEncoder = load_token_encoder(spec, text)
    else:
        encoder = context_factory.build_context_encoder(text, spec.get("null_mode", "zeros"))
    if (encoder.dim, encoder.n_tokens) != (spec["dim"], spec["n_tokens"]):
        raise ValueError(f"{spec_path}: the context encoder now gives D={encoder.dim}, "
                         f"m={encoder.n_tokens}, but the stage was trained with D={spec['dim']}, "
                         f"m={spec['n_tokens']}")
    with reading(prompts_path, "cond"):
        encoder.load_trainable_state_dict(prompts)
    try:
        encoder.to(device)
    except (ValueError, RuntimeError):  # quantised models keep their own device map
        pass
    return encoder.eval(), bool(spec.get("null_context"))


def pairs_to_sample(cohort: Cohort, split: str) -> pd.DataFrame:
    """The pairs of a split, in a stable order (row i of the outputs = row i here)."""
    pairs = cohort.pairs(split)
    if not len(pairs):
        raise ValueError(f"cohort {cohort.path} has no pairs in the {split} split")
    return pairs.sort_values("pair_id", kind="stable").reset_index(drop=True)
