"""CorrFlowNet-style networks and losses (Wu et al., arXiv 2511.18185; only the abstract is
public, so every choice here is the project's reading, docs/compared-methods.md): the
correlational autoencoder with its malignancy head, the velocity network of the background-
aligned rectified flow, the flow's integrator (ODE and SDE), their files and `namd check` sizing.

Autoencoder: crops in [-1, 1] -> posterior (mean, log-variance) of a C x h x w latent (stride-2
convolutions, residual blocks, GroupNorm, SiLU), a mirrored decoder, a malignancy head on the
latent. Its loss on a batch of PAIRS (CorrNet-style, Chandar et al. 2016): both crops
reconstructed from their own sampled latents, plus corr_weight x (1 - mean per-dimension Pearson
correlation of the two posterior means over the batch), plus pred_weight x the head's BCE on both
latents against the pair's label, plus kl_weight x KL.

Flow: z_t = (1 - t) z_b + t z_f in the autoencoder's scaled latent space (from the baseline's
latent, not from noise), target velocity z_f - z_b, v(z_t, t) (or v(z_t, t, z_b) with z_b concatenated, under
corrflownet.condition_on_baseline).
Sampling: Euler from z_b (ODE), or Euler-Maruyama with s sqrt(t (1 - t)) dW (SDE).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from namd.config import NamdConfig, TrainConfig
from namd.config.corrflownet import CorrAutoencoderConfig, CorrFlowConfig, CorrFlowNetConfig
from namd.run.provenance import atomic_write_bytes, atomic_write_json
from namd.run.readers import load_safetensors, read_json, reading

AE_SPEC, AE_WEIGHTS = "autoencoder.json", "autoencoder.safetensors"
FLOW_SPEC, FLOW_WEIGHTS = "flow.json", "flow.safetensors"
TIME_SCALE = 1000.0  # t in [0, 1] enters the U-Net's sinusoidal embedding as t x 1000
LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's log-variance clamp (as diffusers' KL autoencoder)


# -- the correlational autoencoder ---------------------------------------------------------------
class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip (a 1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.GroupNorm(groups, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _encoder(cfg: CorrAutoencoderConfig) -> nn.Sequential:
    """Crop (1 channel) -> 2C channels (mean, log-variance), halving the size between levels."""
    ch, layers = cfg.channels, [nn.Conv2d(1, cfg.channels[0], 3, padding=1)]
    for i, c in enumerate(ch):
        layers += [ResBlock(c, c, cfg.norm_groups) for _ in range(cfg.blocks)]
        if i + 1 < len(ch):
            layers.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
    layers += [nn.GroupNorm(cfg.norm_groups, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: CorrAutoencoderConfig) -> nn.Sequential:
    """C latent channels -> crop (1 channel), the encoder mirrored (nearest upsampling + conv)."""
    ch = cfg.channels[::-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)]
    for i, c in enumerate(ch):
        layers += [ResBlock(c, c, cfg.norm_groups) for _ in range(cfg.blocks)]
        if i + 1 < len(ch):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, ch[i + 1], 3, padding=1)]
    layers += [nn.GroupNorm(cfg.norm_groups, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 1, 3, padding=1)]
    return nn.Sequential(*layers)


class SpatialMean(nn.Module):
    """(B, C, N) -> (B, C): the mean over positions (a global average pool)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(-1)


class CorrAutoencoder(nn.Module):
    """Encoder, decoder and malignancy head of the correlational autoencoder."""

    def __init__(self, cfg: CorrAutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = _encoder(cfg), _decoder(cfg)
        # the spatial mean by hand: AdaptiveAvgPool2d's CUDA backward has no deterministic kernel
        self.head = nn.Sequential(nn.Conv2d(cfg.latent_channels, cfg.head_width, 1), nn.SiLU(),
                                  nn.Flatten(2), SpatialMean(), nn.Linear(cfg.head_width, 1))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of the latent of crops x (B, 1, H, W) in [-1, 1]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Crops (B, 1, H, W) in [-1, 1] units (unclipped) of latents z."""
        return self.decoder(z)

    def logit(self, z: Tensor) -> Tensor:
        """The malignancy head's logit (B,) of latents z."""
        return self.head(z)[:, 0]


def latent_size(cfg: CorrAutoencoderConfig, crop_size: int) -> int:
    """h = w of the latent of a crop_size crop (refused when the levels do not divide it)."""
    factor = 2 ** (len(cfg.channels) - 1)
    if crop_size % factor:
        raise ValueError(f"crop_size {crop_size} is not divisible by 2^{len(cfg.channels) - 1} "
                         f"(corrflownet.autoencoder.channels has {len(cfg.channels)} levels)")
    return crop_size // factor


def build_autoencoder(cfg: CorrAutoencoderConfig, seed: int | None = None) -> CorrAutoencoder:
    """A fresh autoencoder, seeded without touching the global RNG's stream."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return CorrAutoencoder(cfg)


def pearson_per_dim(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over latent dimensions of the Pearson correlation of a and b over the batch: centred
    and scale-free (CorrNet's correlation term), (B, ...) -> scalar in [-1, 1]."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(0), b - b.mean(0)
    cov = (a * b).sum(0)
    return (cov / (a.pow(2).sum(0).add(eps).sqrt() * b.pow(2).sum(0).add(eps).sqrt())).mean()


def kl_to_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), mean over elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def autoencoder_loss(ae: CorrAutoencoder, xb: Tensor, xf: Tensor, labels: Tensor,
                     generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """The correlational autoencoder's loss of a batch of pairs (module docstring): `xb`, `xf`
    (B, 1, H, W) in [-1, 1], `labels` (B,) with NaN for unknown."""
    cfg = ae.cfg
    mean, logvar = ae.encode(torch.cat([xb, xf]))
    noise = torch.randn(mean.shape, generator=generator).to(mean)
    z = mean + (0.5 * logvar).exp() * noise
    recon = ae.decode(z)
    target = torch.cat([xb, xf])
    rec = F.l1_loss(recon, target) if cfg.recon == "l1" else F.mse_loss(recon, target)
    mb, mf = mean.chunk(2)
    corr = pearson_per_dim(mb, mf) if len(xb) > 1 else mean.sum() * 0.0
    logits = ae.logit(z)
    both = torch.cat([labels, labels]).to(logits)
    known = torch.isfinite(both)
    bce = (F.binary_cross_entropy_with_logits(logits[known], both[known]) if known.any()
           else logits.sum() * 0.0)
    kl = kl_to_normal(mean, logvar)
    loss = rec + cfg.corr_weight * (1.0 - corr) + cfg.pred_weight * bce + cfg.kl_weight * kl
    return loss, {"recon": float(rec.detach()), "corr": float(corr.detach()),
                  "bce": float(bce.detach()), "kl": float(kl.detach())}


# -- the velocity network and the flow ------------------------------------------------------------
def build_flow(cfg: CorrFlowConfig, *, latent_channels: int, sample_size: int, conditioned: bool,
               seed: int | None = None) -> UNet2DModel:
    """v(z_t, t[, z_b]): a UNet2DModel, [z_t, z_b] in (2C; C unconditioned), the velocity out."""
    levels = len(cfg.block_out_channels)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=sample_size, in_channels=latent_channels * (2 if conditioned else 1),
            out_channels=latent_channels, block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
            add_attention=cfg.attention, attention_head_dim=cfg.head_channels)


def velocity(net: nn.Module, z: Tensor, t: Tensor, zb: Tensor | None) -> Tensor:
    """The network's velocity at latents z, times t (B,) in [0, 1], baseline latents zb (or None)."""
    inp = z if zb is None else torch.cat([z, zb], 1)
    return net(inp, t.to(z) * TIME_SCALE).sample


def sample_times(batch: int, generator: torch.Generator, mode: str) -> Tensor:
    """Training times in [0, 1]: uniform, or logit-normal (sigmoid of a standard normal)."""
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator))
    return torch.rand(batch, generator=generator)


def flow_loss(net: nn.Module, zb: Tensor, zf: Tensor, generator: torch.Generator,
              cfg: CorrFlowNetConfig) -> tuple[Tensor, dict[str, float]]:
    """Rectified-flow MSE of one batch of (baseline, follow-up) latents: z_t on the straight line,
    target z_f - z_b."""
    t = sample_times(len(zb), generator, cfg.t_sampling).to(zb)
    tt = t.view(-1, 1, 1, 1)
    zt = (1.0 - tt) * zb + tt * zf
    pred = velocity(net, zt, t, zb if cfg.condition_on_baseline else None)
    mse = (pred.float() - (zf - zb).float()).pow(2).mean()
    return mse, {"mse": float(mse.detach())}


def integrate(drift: Callable[[Tensor, Tensor], Tensor], zb: Tensor, steps: int, scale: float = 0.0,
              noise: Callable[[], Tensor] | None = None) -> Tensor:
    """z at t = 1 from z_b at t = 0: Euler over `steps` uniform steps of `drift(z, t)` (the ODE);
    with scale > 0, Euler-Maruyama with the diffusion s sqrt(t (1 - t)) dW, `noise()` a standard
    normal draw of z's shape per step (the SDE; zero at t = 0 and none added in the last step)."""
    z, h = zb, 1.0 / steps
    for i in range(steps):
        t = i * h
        z = z + h * drift(z, torch.full((len(z),), t, dtype=z.dtype, device=z.device))
        if scale > 0 and noise is not None and i + 1 < steps:
            z = z + scale * (t * (1.0 - t)) ** 0.5 * h ** 0.5 * noise().to(z)
    return z


# -- files -------------------------------------------------------------------------------------------
def _state(module: nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def save_autoencoder(ae: CorrAutoencoder, out: Path, **extra: Any) -> None:
    """autoencoder.safetensors and autoencoder.json (its config and `extra`), atomically."""
    atomic_write_bytes(Path(out) / AE_WEIGHTS, _state(ae))
    spec = {"autoencoder": ae.cfg.model_dump(mode="json", exclude={"train"}), **extra}
    atomic_write_json(Path(out) / AE_SPEC, spec)


def load_autoencoder(stage_dir: Path, device: str | torch.device = "cpu") -> tuple[CorrAutoencoder, dict[str, Any]]:
    """The trained autoencoder of a stage folder (eval mode, frozen) and its spec (RunFileError
    naming a missing or damaged file)."""
    spec_path, weights = Path(stage_dir) / AE_SPEC, Path(stage_dir) / AE_WEIGHTS
    spec = read_json(spec_path, keys=("autoencoder",))
    state = load_safetensors(weights)
    with reading(spec_path):
        ae = CorrAutoencoder(CorrAutoencoderConfig.model_validate(spec["autoencoder"]))
        try:
            ae.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"its config does not fit {AE_WEIGHTS} ({str(exc).splitlines()[0]})") from None
    return ae.to(device).eval().requires_grad_(False), spec


def save_flow(net: UNet2DModel, cfg: CorrFlowConfig, out: Path, **extra: Any) -> None:
    """flow.safetensors and flow.json (the network's config, latent shape, scale...), atomically."""
    atomic_write_bytes(Path(out) / FLOW_WEIGHTS, _state(net))
    atomic_write_json(Path(out) / FLOW_SPEC, {"flow": cfg.model_dump(mode="json"), **extra})


def load_flow(stage_dir: Path, device: str | torch.device = "cpu") -> tuple[UNet2DModel, dict[str, Any]]:
    """The trained velocity network of a cond_corrflownet folder (eval mode) and its spec."""
    spec_path, weights = Path(stage_dir) / FLOW_SPEC, Path(stage_dir) / FLOW_WEIGHTS
    spec = read_json(spec_path, keys=("flow", "latent_shape", "latent_scale", "condition_on_baseline"))
    state = load_safetensors(weights)
    with reading(spec_path):
        c, h, _ = (int(v) for v in spec["latent_shape"])
        net = build_flow(CorrFlowConfig.model_validate(spec["flow"]), latent_channels=c, sample_size=h,
                         conditioned=bool(spec["condition_on_baseline"]))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"its config does not fit {FLOW_WEIGHTS} ({str(exc).splitlines()[0]})") from None
        if not float(spec["latent_scale"]) > 0:
            raise ValueError(f"latent_scale {spec['latent_scale']!r} is not positive")
    return net.to(device).eval().requires_grad_(False), spec


# -- sizing (`namd check`) ------------------------------------------------------------------------
def stage_train_config(config: NamdConfig) -> TrainConfig:
    """The cond_corrflownet stage's training settings (its batch size sizes the step)."""
    return config.corrflownet.train


def sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one cond_corrflownet step on meta tensors: the velocity
    network trains; the autoencoder encoded the pairs once before training (not held)."""
    cfg = config.corrflownet
    c, h = cfg.autoencoder.latent_channels, latent_size(cfg.autoencoder, config.data.crop_size)
    with torch.device("meta"):
        net = build_flow(cfg.flow, latent_channels=c, sample_size=h, conditioned=cfg.condition_on_baseline).train()

    def loss() -> Tensor:
        zb, zf = (torch.randn(batch, c, h, h, device="meta") for _ in range(2))
        t = torch.rand(batch, device="meta")
        return (velocity(net, zb + t.view(-1, 1, 1, 1) * (zf - zb), t, zb if cfg.condition_on_baseline else None)
                - (zf - zb)).pow(2).mean()

    return [net], [], loss, f"latent {c} x {h} x {h}; autoencoder latents encoded once before training"


def ae_train_config(config: NamdConfig) -> TrainConfig:
    """The autoencoder_corrflownet stage's training settings."""
    return config.corrflownet.autoencoder.train


def ae_sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one autoencoder_corrflownet step on meta tensors (a
    batch of pairs: 2 x batch crops through the encoder, decoder and head)."""
    cfg, size = config.corrflownet.autoencoder, config.data.crop_size
    with torch.device("meta"):
        ae = CorrAutoencoder(cfg).train()

    def loss() -> Tensor:
        x = torch.randn(2 * batch, 1, size, size, device="meta")
        mean, logvar = ae.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        mb, mf = mean.chunk(2)
        return ((ae.decode(z) - x).abs().mean() - (mb * mf).mean() + kl_to_normal(mean, logvar)
                + F.binary_cross_entropy_with_logits(ae.logit(z), torch.ones(2 * batch, device="meta")))

    return [ae], [], loss, "correlational autoencoder on pairs (two crops per item)"
