"""ImageFlowNet's network (Liu et al., ICASSP 2025), built from its paper and the project's
reference (its code's licence forbids copying; docs/compared-methods.md): a time-independent
U-Net whose skip connections and bottleneck each evolve by an SDE over the interval, with its
Euler-Maruyama integrator, its files and the sizing `namd check` reads.

- U-Net (`encode`, `decode`): per level two (3x3 conv, GroupNorm, ReLU), a strided 3x3 conv
  down; a bottleneck block; the decoder upsamples (nearest, 3x3 conv), concatenates the level's
  skip and runs two (conv, norm, ReLU); a 1x1 conv to the image. Pixel space, [-1, 1] window
  units; no time input (the source's U-Net is time-independent).
- One SDE per skip and one at the bottleneck (`SDEFlow`): dh = f(h) dt + sigma dW, f
  position-parameterised (no t input): GroupNorm, 3x3 conv, ReLU, GroupNorm, 3x3 conv (the
  source's "norm, conv, ReLU, twice" without a last ReLU, so the drift can shrink a feature as
  well as grow it: project's reading); its last conv starts at zero, so the untrained flow is
  the identity and the forecast starts as the baseline's reconstruction (project's choice);
  sigma a learned scalar per SDE (source: initialised 0.5).
- Euler-Maruyama (`evolve`): h += f(h) dt + sigma sqrt(dt) z over t in [0, interval], all
  features together, batched (the source assumes batch 1): every op is batched and the noise z
  of a step comes from `noise(batch, size)`: the step's generator in training, each sample's own
  generator when sampling (namd.inference.imageflownet_sampler), so sample k of a nodule never
  depends on its batch.

Files: model.json (the U-Net's config, the crop size, which parts the weights hold) and
model.safetensors (its state); the reconstruction stage writes the U-Net's parts, the SDE stage
the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from namd.config import NamdConfig, TrainConfig
from namd.config.imageflownet import ImageFlowNetUNetConfig
from namd.run.provenance import atomic_write_bytes, atomic_write_json
from namd.run.readers import load_safetensors, read_json, reading

MODEL_FILE = "model.safetensors"
MODEL_SPEC = "model.json"
UNET_PARTS = ("encoder", "decoder")  # the time-independent parts (phase 2 freezes them)
ALL_PARTS = (*UNET_PARTS, "flows")
Noise = Callable[[int, int], Tensor]  # (batch, numbers per sample) -> standard normal draws


def double_conv(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """Two (3x3 conv, GroupNorm, ReLU): one U-Net block."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU())


class Encoder(nn.Module):
    """The U-Net's contracting half: the features of each level (the skips) and the bottleneck."""

    def __init__(self, cfg: ImageFlowNetUNetConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.unshuffle = nn.PixelUnshuffle(cfg.patch)
        first = cfg.patch * cfg.patch
        self.blocks = nn.ModuleList(double_conv(c_in, c, g) for c_in, c in zip((first, *ch[:-1]), ch, strict=True))
        self.downs = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in ch)
        self.bottleneck = double_conv(ch[-1], ch[-1], g)

    def forward(self, x: Tensor) -> list[Tensor]:
        """[skip of level 0, ..., skip of the last level, bottleneck]."""
        feats, x = [], self.unshuffle(x)
        for block, down in zip(self.blocks, self.downs, strict=True):
            x = block(x)
            feats.append(x)
            x = down(x)
        return [*feats, self.bottleneck(x)]


class Decoder(nn.Module):
    """The U-Net's expanding half: from the bottleneck up, each level's skip concatenated."""

    def __init__(self, cfg: ImageFlowNetUNetConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        below = (*ch[1:], ch[-1])  # the width arriving from the level beneath
        self.ups = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                               nn.Conv2d(b, c, 3, padding=1)) for b, c in zip(below, ch, strict=True))
        self.blocks = nn.ModuleList(double_conv(2 * c, c, g) for c in ch)
        self.out = nn.Sequential(nn.Conv2d(ch[0], cfg.patch * cfg.patch, 1), nn.PixelShuffle(cfg.patch))

    def forward(self, feats: list[Tensor]) -> Tensor:
        """The image (B, 1, H, W) from [skips..., bottleneck]."""
        x = feats[-1]
        for level in reversed(range(len(self.blocks))):
            x = self.blocks[level](torch.cat([self.ups[level](x), feats[level]], dim=1))
        return self.out(x)


class SDEFlow(nn.Module):
    """One feature map's SDE: a position-parameterised drift f(h) and a learned scale sigma."""

    def __init__(self, channels: int, groups: int, scale_init: float):
        super().__init__()
        self.drift = nn.Sequential(nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.ReLU(), nn.GroupNorm(groups, channels),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.drift[-1].weight)
        nn.init.zeros_(self.drift[-1].bias)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def smoothness(self) -> Tensor:
        """Sum of the squared Frobenius norms of the drift's conv weights."""
        return sum(m.weight.pow(2).sum() for m in self.drift if isinstance(m, nn.Conv2d))  # type: ignore[return-value]


class ImageFlowNet(nn.Module):
    """The U-Net (encoder, decoder) and one SDE per skip connection plus one at the bottleneck."""

    def __init__(self, cfg: ImageFlowNetUNetConfig, scale_init: float):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        widths = (*cfg.channels, cfg.channels[-1])
        self.flows = nn.ModuleList(SDEFlow(c, cfg.norm_groups, scale_init) for c in widths)

    def reset_flows(self, scale_init: float, seed: int) -> None:
        """Fresh SDEs (seeded): the reconstruction stage's are never trained."""
        widths = (*self.cfg.channels, self.cfg.channels[-1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.flows = nn.ModuleList(SDEFlow(c, self.cfg.norm_groups, scale_init) for c in widths)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Phase 1: the U-Net alone (no time passes)."""
        return self.decoder(self.encoder(x))

    def evolve(self, feats: list[Tensor], steps: int, noise: Noise, interval: float = 1.0) -> list[Tensor]:
        """Euler-Maruyama over [0, interval] in `steps` steps, every feature map together."""
        dt = interval / steps
        sizes = [f[0].numel() for f in feats]
        for _ in range(steps):
            z = noise(feats[0].shape[0], sum(sizes)).to(feats[0]).split(sizes, dim=1)
            feats = [h + flow.drift(h) * dt + flow.scale * math.sqrt(dt) * zi.view_as(h)
                     for h, flow, zi in zip(feats, self.flows, z, strict=True)]
        return feats

    def forecast(self, x: Tensor, steps: int, noise: Noise, interval: float = 1.0) -> Tensor:
        """The follow-up image of baselines `x` (B, 1, H, W) after `interval`."""
        return self.decoder(self.evolve(self.encoder(x), steps, noise, interval))

    def smoothness(self) -> Tensor:
        """The smoothness term over every drift."""
        return sum(flow.smoothness() for flow in self.flows)  # type: ignore[return-value]

    def scales(self) -> list[float]:
        """The diffusion scales sigma, one per SDE (skips from the finest, then the bottleneck)."""
        return [float(flow.scale.detach()) for flow in self.flows]


def generator_noise(generator: torch.Generator) -> Noise:
    """Noise drawn from one generator for the whole batch (a training step's)."""
    return lambda batch, size: torch.randn((batch, size), generator=generator)


def build_model(cfg: ImageFlowNetUNetConfig, image_size: int, scale_init: float,
                seed: int | None = None) -> ImageFlowNet:
    """The network for crops of `image_size` (divisible by 2 ** levels), seeded when asked."""
    factor = cfg.patch * 2 ** len(cfg.channels)
    if image_size % factor:
        raise ValueError(f"crop size {image_size} is not divisible by {factor} (imageflownet.unet's "
                         "patch x 2 ** levels)")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return ImageFlowNet(cfg, scale_init)


def save_model(model: ImageFlowNet, out: Path, image_size: int, parts: tuple[str, ...] = ALL_PARTS,
               **extra: Any) -> None:
    """model.safetensors (the state of `parts`) and model.json (what rebuilds it), atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k.split(".")[0] in parts}
    atomic_write_bytes(Path(out) / MODEL_FILE, save(state))
    atomic_write_json(Path(out) / MODEL_SPEC, {"unet": model.cfg.model_dump(mode="json"),
                                               "image_size": image_size, "parts": list(parts),
                                               "scales": model.scales(), **extra})


def load_model(stage_dir: Path, parts: tuple[str, ...] = ALL_PARTS, device: str | torch.device = "cpu",
               scale_init: float = 0.0) -> tuple[ImageFlowNet, dict[str, Any]]:
    """The model of a stage folder holding at least `parts` (eval mode, frozen) and its spec;
    a missing or damaged file is a RunFileError naming it."""
    spec_path, weights = Path(stage_dir) / MODEL_SPEC, Path(stage_dir) / MODEL_FILE
    spec = read_json(spec_path, keys=("unet", "image_size", "parts"))
    state = load_safetensors(weights)
    with reading(spec_path):  # the weights passed their sha256: a mismatch is the spec's
        lacking = [p for p in parts if p not in spec["parts"]]
        if lacking:
            raise ValueError(f"holds the parts {spec['parts']}, not {lacking}")
        model = build_model(ImageFlowNetUNetConfig.model_validate(spec["unet"]), int(spec["image_size"]),
                            scale_init)
        expected = {k for k in model.state_dict() if k.split(".")[0] in spec["parts"]}
        if set(state) != expected:
            raise ValueError(f"its U-Net config does not fit {MODEL_FILE} (tensors "
                             f"{sorted(set(state) ^ expected)[:3]} differ)")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise ValueError(f"its U-Net config does not fit {MODEL_FILE} ({exc})") from None
    return model.to(device).eval().requires_grad_(False), spec


# -- namd check -----------------------------------------------------------------------------------
def stage_train_config(config: NamdConfig) -> TrainConfig:
    """The SDE stage's trainer settings (its batch size sizes the step)."""
    return config.imageflownet.train


def sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one SDE-stage step on meta tensors: the SDEs train,
    the U-Net is frozen; the step runs solver_steps Euler-Maruyama steps through all of them."""
    cfg, size = config.imageflownet, config.data.crop_size
    with torch.device("meta"):
        model = build_model(cfg.unet, size, cfg.diffusion_init)
    model.encoder.requires_grad_(False)
    model.decoder.requires_grad_(False)

    def loss() -> Tensor:
        x, y = (torch.randn(batch, 1, size, size, device="meta") for _ in range(2))
        pred = model.forecast(x, cfg.solver_steps, lambda b, n: torch.randn(b, n, device="meta"))
        return (pred - y).pow(2).mean() + cfg.smoothness_weight * model.smoothness()

    note = (f"{len(model.flows)} SDEs on {size} px crops, {cfg.solver_steps} Euler-Maruyama "
            "steps per training step")
    return [model.flows], [model.encoder, model.decoder], loss, note


def recon_train_config(config: NamdConfig) -> TrainConfig:
    """The reconstruction stage's trainer settings (its batch size sizes the step)."""
    return config.imageflownet.recon.train


def recon_sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one reconstruction step on meta tensors: the U-Net's
    encoder and decoder train (no SDE yet), noisy crop in, clean crop out."""
    cfg, size = config.imageflownet, config.data.crop_size
    with torch.device("meta"):
        model = build_model(cfg.unet, size, cfg.diffusion_init)

    def loss() -> Tensor:
        x = torch.randn(batch, 1, size, size, device="meta")
        return (model.reconstruct(x) - x).pow(2).mean()

    return [model.encoder, model.decoder], [], loss, f"the U-Net alone on {size} px crops"
