"""The denoising U-Net of both diffusion stages (paper 3.3.2, Appendix B): a diffusers
UNet2DConditionModel from a typed factory, SD1.5 weights from a local path, and the stage 1 ->
stage 2 hand-over (conv_in widened from 4 to 8 input channels, the new channels zero).

Weights move between layouts by name: a tensor of the same name and shape is copied, conv_in is
widened, and anything else keeps its fresh initialisation and is listed in a TransferReport
(for example the cross-attention key/value projections when SD1.5's 768-wide text context is
replaced by the context encoder's D).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from namd.config import UNetConfig
from namd.run.contract import DIFFUSERS_WEIGHTS
from namd.run.provenance import atomic_dir
from namd.run.readers import check_safetensors, read_json, reading

log = logging.getLogger(__name__)

MODEL_DIR = "unet"
LDM_PREFIX = "model.diffusion_model."


def block_types(levels: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block types of the SD1.5 layout for `levels` resolutions: cross-attention
    everywhere except the deepest level (SD1.5: three cross-attention levels of four)."""
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    return down, up


def build_unet(cfg: UNetConfig, *, in_channels: int, out_channels: int, cross_attention_dim: int,
               sample_size: int, seed: int | None = None,
               pooled_context: bool = False) -> UNet2DConditionModel:
    """A U-Net of the configured size; `seed` makes the initialisation reproducible without
    touching the global random state. Works under `torch.device("meta")` for size checks.

    `pooled_context` adds diffusers' attention-pooled context embedding to the timestep
    embedding (addition_embed_type 'text'), its output layer zero so that it starts silent."""
    if len(cfg.block_out_channels) < 2:
        raise ValueError("diffusion.unet.block_out_channels needs at least two levels")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"diffusion.unet.block_out_channels {bad} not divisible by "
                         f"norm_num_groups = {cfg.norm_num_groups}")
    down, up = block_types(len(cfg.block_out_channels))
    kwargs = dict(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cross_attention_dim, dropout=cfg.dropout,
    )
    if pooled_context:  # heads of the pooling: SD1.5's eight where D allows, else one
        heads = cfg.attention_head_dim if cross_attention_dim % cfg.attention_head_dim == 0 else 1
        kwargs.update(addition_embed_type="text", addition_embed_type_num_heads=heads)
    with _seeded(seed):
        unet = UNet2DConditionModel(**kwargs)
    if pooled_context:
        silence_pooled_context(unet)
    return unet


def silence_pooled_context(unet: UNet2DConditionModel) -> None:
    """Zero the pooled-context embedding's last layer (LayerNorm scale and shift): the U-Net then
    computes what it did without it, and learns how much of the record to add."""
    with torch.no_grad():
        unet.add_embedding.norm2.weight.zero_()
        unet.add_embedding.norm2.bias.zero_()


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run a block with a fixed torch seed, restoring the caller's random state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class TransferReport:
    """What happened to each tensor when weights moved into a new layout."""

    copied: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    share: float = 0.0  # share of the target's parameters that came from the source

    def as_dict(self) -> dict:
        """JSON-ready form, for the stage folder and the log."""
        return asdict(self)

    def log(self, what: str) -> None:
        """One INFO line, plus the re-initialised and unused tensors by name."""
        log.info("%s: %d tensors copied, %d widened, %d re-initialised, %d unused (%.1f%% of "
                 "parameters carried over)", what, len(self.copied), len(self.widened),
                 len(self.reinitialised), len(self.unused), 100 * self.share)
        for name in self.reinitialised:
            log.info("%s: re-initialised %s", what, name)
        for name in self.unused:
            log.info("%s: not used %s", what, name)


@torch.no_grad()
def transfer_weights(source: Mapping[str, torch.Tensor], target: torch.nn.Module,
                     min_share: float = 0.0, what: str = "weights") -> TransferReport:
    """Copy `source` tensors into `target` by name (see the module docstring).

    conv_in.weight with fewer input channels than the target is widened: the source channels
    are copied and the extra channels set to zero, so the widened network computes exactly what
    the source did whatever the extra input holds. Raises when less than `min_share` of the
    target's parameters carried over (a layout that does not match the configuration).
    """
    report = TransferReport()
    own = target.state_dict()
    carried = total = 0
    for name, dst in own.items():
        total += dst.numel()
        src = source.get(name)
        if src is not None and tuple(src.shape) == tuple(dst.shape):
            dst.copy_(src.to(dst.dtype))
            report.copied.append(name)
            carried += dst.numel()
        elif src is not None and name == "conv_in.weight" and _widens(src, dst):
            dst.zero_()
            dst[:, : src.shape[1]] = src.to(dst.dtype)
            report.widened.append(name)
            carried += src.numel()
        else:
            report.reinitialised.append(name)
    report.unused = sorted(set(source) - set(own))
    report.share = carried / max(total, 1)
    if report.share < min_share:
        raise ValueError(f"{what}: only {100 * report.share:.0f}% of the U-Net parameters match "
                         f"(need {100 * min_share:.0f}%); does diffusion.unet match the weights? "
                         f"first mismatches: {', '.join(report.reinitialised[:3])}")
    report.log(what)
    return report


def _widens(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """True when conv_in `src` is `dst` with fewer input channels."""
    return (src.ndim == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]
            and src.shape[1] < dst.shape[1])


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> tuple[UNet2DConditionModel, TransferReport]:
    """Stage 1 -> stage 2: the same U-Net with `in_channels` inputs, new channels zero."""
    wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": in_channels})
    report = transfer_weights(unet.state_dict(), wide, what="conv_in widening")
    if report.reinitialised:  # cannot happen for a U-Net of the same config; guard anyway
        raise ValueError(f"conv_in widening lost weights: {report.reinitialised[:3]}")
    return wide.to(device=unet.device, dtype=unet.dtype), report


def pretrained_state(path: str | Path, like: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """U-Net weights from a local SD1.5 copy (never the network), with diffusers key names.

    Accepts a diffusers U-Net folder, a pipeline folder holding unet/, or one .safetensors file
    with diffusers names or the original LDM names (model.diffusion_model.*, converted with
    diffusers' own converter for the layout of `like`). Pickle files (.ckpt, .bin) are refused.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"diffusion.unet.pretrained: {path} not found")
    if path.is_dir():
        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"diffusion.unet.pretrained: {path} holds no diffusers U-Net "
                                    f"(config.json in it or in {path / 'unet'})")
        model = UNet2DConditionModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        return model.state_dict()
    if path.suffix != ".safetensors":
        raise ValueError(f"diffusion.unet.pretrained: {path} is not a .safetensors file; namd never "
                         "unpickles checkpoints (convert it to safetensors first)")
    state = load_file(str(path))
    if any(k.startswith(LDM_PREFIX) for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        state = convert_ldm_unet_checkpoint(state, dict(like.config))
    return state


def load_pretrained_into(unet: UNet2DConditionModel, cfg: UNetConfig) -> TransferReport | None:
    """Initialise `unet` from cfg.pretrained when set (SD1.5, Appendix B); None otherwise."""
    if not cfg.pretrained:
        return None
    from namd.models.foundation import resolve

    state = pretrained_state(resolve(cfg.pretrained), unet)
    return transfer_weights(state, unet, min_share=cfg.min_transferred,
                            what=f"pretrained U-Net {cfg.pretrained}")


def save_model(model: Any, folder: Path) -> Path:
    """Export a diffusers model (a U-Net, a transformer) as a diffusers folder (config.json +
    safetensors), atomically."""
    with atomic_dir(Path(folder), overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(folder)


def load_model(cls: Any, folder: Path, device: str | torch.device = "cpu") -> Any:
    """A diffusers model of class `cls` exported by a finished stage, frozen, in eval mode (its
    files checked first, the weights against the sha256 the stage recorded: RunFileError naming
    the one that is missing or damaged)."""
    folder = Path(folder)
    read_json(folder / "config.json")
    check_safetensors(folder / DIFFUSERS_WEIGHTS)
    with reading(folder):
        model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    return model.to(device).eval().requires_grad_(False)


def save_unet(unet: UNet2DConditionModel, stage_dir: Path) -> Path:
    """Export the U-Net of a stage as RUN/<stage>/unet/."""
    return save_model(unet, Path(stage_dir) / MODEL_DIR)


def load_unet(stage_dir: Path, device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """The exported U-Net of a finished prior or cond stage (load_model)."""
    return load_model(UNet2DConditionModel, Path(stage_dir) / MODEL_DIR, device)
