"""Flux's networks for the Flux row of Table 1: diffusers' FluxTransformer2DModel with the
baseline latent in a widened input embedding, the latent packing of FluxPipeline, the
rectified-flow schedule, the record's text path, and the stage's size for `namd check`.

Packing (diffusers' FluxPipeline._pack_latents): a (C, h, w) latent becomes (h/2 x w/2) tokens of
4C values, each 2x2 patch channel-major (value c*4 + 2*dy + dx). The follow-up being denoised and
the baseline are concatenated on the channel axis *before* packing, as diffusers' Flux Control
training does, so the first 4C values of a token are the noisy follow-up's and the last 4C the
baseline's: x_embedder takes 8C inputs and the output layer gives 4C. Image tokens carry RoPE ids
(0, row, column) of the packed grid, text tokens ids 0 (FluxPipeline).

Starting from FLUX.1 weights (flux.pretrained), every tensor of the same name and shape is
copied; x_embedder is widened as in the Flux Control training (pretrained columns for the
noisy latent, the baseline's columns zero) when the VAE has Flux's 16 channels. With namd's
4-channel VAE (the row shares the run's plain VAE; FLUX.1's own 16-channel VAE is not loaded)
x_embedder and proj_out do not fit and start fresh (TransferReport lists them).

Text path (flux.text_encoder): 'shared' = the run's frozen language model
(namd.models.token_text.FrozenTextEncoder: MiniLM's token states, zero-padded, and their mean)
for both of Flux's inputs; 't5_clip' = T5's token states (FluxPipeline: padded to
`text_length` with T5's pad token, no attention mask) and CLIP's pooled output, local folders
only. Both are frozen: a training stage encodes each record once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import Tensor

from namd.cohort.ehr import EHR
from namd.config import NamdConfig, TrainConfig
from namd.config.flux import FluxConfig, FluxTransformerConfig
from namd.models.token_text import FrozenTextEncoder
from namd.models.unet import TransferReport, load_model, save_model

log = logging.getLogger(__name__)

MODEL_DIR = "transformer"
SCHEDULER_DIR = "scheduler"
TEXT_FILE = "text_encoder.json"
NUM_TRAIN_TIMESTEPS = 1000  # FlowMatchEulerDiscreteScheduler's (FLUX.1's scheduler config)
GUIDANCE = 3.5  # FluxPipeline's default guidance, fed only to a guidance-distilled layout
T5_WIDTH, CLIP_WIDTH = 4096, 768  # T5-XXL d_model and CLIP ViT-L/14's hidden size (FLUX.1)


# -- packing and positions ------------------------------------------------------------------------
def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FluxPipeline's 2x2 packing."""
    b, c, h, w = z.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux packs 2x2 latent patches: latent {h}x{w} must have even sides")
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w): the inverse of `pack`."""
    b, _, d = tokens.shape
    z = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
    """RoPE ids (h/2 * w/2, 3) of the packed tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


# -- the network ----------------------------------------------------------------------------------
def build_transformer(cfg: FluxTransformerConfig, *, latent_channels: int, joint_dim: int,
                      pooled_dim: int, seed: int | None = None) -> FluxTransformer2DModel:
    """A FluxTransformer2DModel taking [noisy follow-up, baseline] packed (8C values per token)
    and predicting the velocity of the follow-up (4C); `seed` fixes the initialisation without
    touching the caller's random state. Works under torch.device("meta")."""
    kwargs = dict(patch_size=1, in_channels=8 * latent_channels, out_channels=4 * latent_channels,
                  num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
                  attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
                  joint_attention_dim=joint_dim, pooled_projection_dim=pooled_dim,
                  guidance_embeds=cfg.guidance_embeds, axes_dims_rope=tuple(cfg.axes_dims_rope))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return FluxTransformer2DModel(**kwargs)


def velocity(model: FluxTransformer2DModel, x: Tensor, baseline: Tensor, sigma: Tensor,
             tokens: Tensor, pooled: Tensor) -> Tensor:
    """The predicted velocity (noise - x_0) at x = x_sigma (B, C, h, w) given the baseline
    latent, sigma (B,) in [0, 1] and the record's token states and pooled vector."""
    h, w = x.shape[-2:]
    hidden = pack(torch.cat([x, baseline.to(x)], 1))
    guidance = (torch.full((x.shape[0],), GUIDANCE, device=x.device, dtype=x.dtype)
                if model.config.guidance_embeds else None)
    out = model(hidden_states=hidden, timestep=sigma.to(x), guidance=guidance,
                pooled_projections=pooled.to(x), encoder_hidden_states=tokens.to(x),
                txt_ids=torch.zeros(tokens.shape[1], 3, device=x.device, dtype=x.dtype),
                img_ids=image_ids(h, w, x.device).to(x.dtype), return_dict=False)[0]
    return unpack(out, h, w)


def flow_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    """The rectified-flow schedule with a fixed shift (no resolution-dependent shifting)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift,
                                           use_dynamic_shifting=False)


def _transformer_folder(path: Path) -> Path:
    """A FLUX.1 pipeline's transformer/ folder, or the folder itself."""
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path


@torch.no_grad()
def load_pretrained_into(model: FluxTransformer2DModel, source: str, min_share: float) -> TransferReport:
    """Copy FLUX.1 weights (local safetensors, read a tensor at a time) into `model` by name;
    x_embedder widened (new columns zero) when only the baseline's columns are new."""
    folder = _transformer_folder(Path(source).expanduser())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"flux.pretrained: {folder} holds no .safetensors weights (a local "
                                "FLUX.1-schnell folder with transformer/; never downloaded)")
    from safetensors import safe_open

    own, report, carried = model.state_dict(), TransferReport(), 0
    seen: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                seen.add(name)
                dst = own.get(name)
                if dst is None:
                    report.unused.append(name)
                    continue
                src = fh.get_tensor(name)
                if src.shape == dst.shape:
                    dst.copy_(src.to(dst.dtype))
                    report.copied.append(name)
                    carried += dst.numel()
                elif name == "x_embedder.weight" and src.shape[0] == dst.shape[0] and 2 * src.shape[1] == dst.shape[1]:
                    dst.zero_()
                    dst[:, :src.shape[1]] = src.to(dst.dtype)
                    report.widened.append(name)
                    carried += src.numel()
    report.reinitialised = sorted(set(own) - set(report.copied) - set(report.widened))
    report.share = carried / max(sum(t.numel() for t in own.values()), 1)
    if report.share < min_share:
        raise ValueError(f"flux.pretrained: only {100 * report.share:.0f}% of the transformer's "
                         f"parameters match {folder} (need {100 * min_share:.0f}%); does "
                         f"flux.transformer match the weights? e.g. {report.reinitialised[:3]}")
    report.log(f"pretrained Flux {folder}")
    return report


def save_transformer(model: FluxTransformer2DModel, stage_dir: Path) -> Path:
    """Export the transformer as RUN/cond_flux/transformer/ (a diffusers folder)."""
    return save_model(model, Path(stage_dir) / MODEL_DIR)


def load_transformer(stage_dir: Path, device: str | torch.device = "cpu") -> FluxTransformer2DModel:
    """The exported transformer of a finished Flux stage, frozen, eval mode, its files checked
    first (namd.models.unet.load_model)."""
    return load_model(FluxTransformer2DModel, Path(stage_dir) / MODEL_DIR, device)


# -- the record's text path -----------------------------------------------------------------------
def load_t5(folder: Path, length: int) -> FrozenTextEncoder:
    """FLUX.1's T5 (text_encoder_2/, tokenizer_2/ of a FLUX.1 folder, or a T5 folder) as a
    frozen padded encoder: padded to `length` with T5's pad token, run without a mask
    (FluxPipeline._get_t5_prompt_embeds); a longer sentence is an error (FluxPipeline would
    cut it). Local files, safetensors only."""
    from transformers import AutoTokenizer, T5EncoderModel

    model_dir = folder / "text_encoder_2" if (folder / "text_encoder_2").is_dir() else folder
    tok_dir = folder / "tokenizer_2" if (folder / "tokenizer_2").is_dir() else folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = T5EncoderModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"flux.t5: {folder} holds no T5 tokenizer and encoder (safetensors): "
                         f"{' '.join(str(exc).split())[:200]}") from exc
    return FrozenTextEncoder(model, tokenizer, length, padded=True)


class FluxText:
    """The record -> (token states (B, length, dim), pooled (B, pooled_dim)), frozen."""

    def __init__(self, pooled_source: FrozenTextEncoder, tokens_source: FrozenTextEncoder | None,
                 length: int):
        self.pooled_source, self.tokens_source, self.length = pooled_source, tokens_source, length
        self.dim = tokens_source.dim if tokens_source is not None else int(pooled_source.dim)
        self.pooled_dim = int(pooled_source.dim)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FluxText:
        """Build the text path a stage recorded (`spec`: text_spec's dict)."""
        from namd.config import TextConfig

        text = TextConfig.model_validate(spec["text"])
        if spec["text_encoder"] == "shared":
            return cls(FrozenTextEncoder.from_config(text, spec["length"]), None, spec["length"])
        clip = FrozenTextEncoder.from_config(text, spec["length"], clip=spec["clip"], field="flux.clip")
        return cls(clip, load_t5(Path(spec["t5"]).expanduser(), spec["length"]), spec["length"])

    def encode(self, ehrs: Sequence[EHR]) -> tuple[Tensor, Tensor]:
        """Token states and pooled vectors of the records (float32, CPU)."""
        states, pooled = self.pooled_source.encode(list(ehrs))
        if self.tokens_source is not None:
            states = self.tokens_source.encode(list(ehrs))[0]
        return states.float().cpu(), pooled.float().cpu()


def text_spec(config: NamdConfig) -> dict[str, Any]:
    """What builds the stage's text path again (saved as text_encoder.json)."""
    cfg = config.flux
    return {"text_encoder": cfg.text_encoder, "text": config.text.model_dump(mode="json"),
            "length": cfg.text_length, "t5": cfg.t5, "clip": cfg.clip}


def text_widths(config: NamdConfig) -> tuple[int, int]:
    """(token width, pooled width) of the text path from configs alone (no weights read)."""
    cfg = config.flux
    if cfg.text_encoder == "shared":
        from namd.models.text import model_hidden_size

        width = model_hidden_size(config.text.model)
        return width, width
    from transformers import AutoConfig

    def width(folder: str | None, sub: str, key: str, default: int) -> int:
        root = Path(folder).expanduser() if folder else None
        if root is None or not root.exists():
            return default
        path = root / sub if (root / sub).is_dir() else root
        found = AutoConfig.from_pretrained(path, local_files_only=True)
        return int(getattr(found.get_text_config(), key))

    return (width(cfg.t5, "text_encoder_2", "d_model", T5_WIDTH),
            width(cfg.clip, "text_encoder", "hidden_size", CLIP_WIDTH))


# -- namd check -----------------------------------------------------------------------------------
def stage_train_config(config: NamdConfig) -> TrainConfig:
    """The Flux stage's trainer settings (its batch size sizes the step)."""
    return config.flux.train


def sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one Flux training step on meta tensors: the
    transformer at its full size (all of it trains) on `batch` pairs; the frozen text encoders
    ran once before training (cached states), so they hold no memory during the step."""
    from namd.models.vae import latent_shape

    cfg: FluxConfig = config.flux
    c, h, w = latent_shape(config.vae, config.data.crop_size)
    joint, pooled = text_widths(config)
    with torch.device("meta"):
        model = build_transformer(cfg.transformer, latent_channels=c, joint_dim=joint,
                                  pooled_dim=pooled).train()

    def loss() -> Tensor:
        meta = {"device": "meta"}
        x, base = torch.randn(batch, c, h, w, **meta), torch.randn(batch, c, h, w, **meta)
        states = torch.randn(batch, cfg.text_length, joint, **meta)
        pred = velocity(model, x, base, torch.rand(batch, **meta), states, torch.randn(batch, pooled, **meta))
        return (pred - x).pow(2).mean()

    tokens = (h // 2) * (w // 2)
    note = (f"{tokens} image + {cfg.text_length} text tokens, text path {cfg.text_encoder} "
            f"({joint} / {pooled}) encoded once before training, not held during a step")
    return [model], [], loss, note
