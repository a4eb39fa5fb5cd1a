"""McWGAN's networks (Wang et al., Cancers 2024; its paper calls it GP-WGAN): the U-Net
predictor (baseline crop -> follow-up crop, pixel space in [-1, 1] window units), the
conditional WGAN-GP critic, the ResNet nodule classifier of the perceptual loss, the losses
(a differentiable SSIM, the gradient penalty, the predictor's four terms), save/load, and the
stage's size for `namd check`.

One task step trains both GAN networks with one backward (the shared trainer has one loss and
one AdamW): the critic's loss sees the prediction detached, and the predictor's adversarial term
goes through the critic with its parameters detached (torch.func.functional_call), so each
network receives the gradient of its own objective only (`gan_losses`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namd.config import NamdConfig, TrainConfig
from namd.config.mcwgan import McWGANClassifierConfig, McWGANConfig
from namd.run.provenance import atomic_write_bytes, atomic_write_json
from namd.run.readers import load_safetensors, read_json, reading

PREDICTOR, CLASSIFIER = "predictor", "classifier"  # file stems: <stem>.json, <stem>.safetensors


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (batch-independent, as the sampler needs)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each normalised and SiLU-activated (a U-Net level)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), _norm(cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), _norm(cout), nn.SiLU())


class Predictor(nn.Module):
    """U-Net: baseline (B, 1, H, W) -> follow-up (B, 1, H, W); residual: baseline + change."""

    def __init__(self, widths: tuple[int, ...], residual: bool = True):
        super().__init__()
        self.widths, self.residual = tuple(widths), residual
        ins = (1, *widths[:-1])
        self.down = nn.ModuleList(_DoubleConv(a, b) for a, b in zip(ins, widths, strict=True))
        self.up = nn.ModuleList(_DoubleConv(widths[i + 1] + widths[i], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        self.out = nn.Conv2d(widths[0], 1, 1)
        nn.init.zeros_(self.out.weight)  # starts as the copy (residual) or zero
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        skips, h = [], x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        change = self.out(h)
        return x + change if self.residual else change


class Critic(nn.Module):
    """Conditional WGAN critic: (baseline, candidate follow-up) -> a score per pair; stride-2
    convolutions with LeakyReLU 0.2 and no normalisation (the gradient penalty is per sample)."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip((2, *widths[:-1]), widths, strict=True):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, baseline: Tensor, candidate: Tensor) -> Tensor:
        return self.head(self.body(torch.cat([baseline, candidate], 1)).mean((-2, -1)))[:, 0]


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class NoduleClassifier(nn.Module):
    """ResNet on one-channel crops: 3x3 stem (stride `stem_stride`), stages of basic blocks (stride 2 between stages),
    global average pool (`features`: the last hidden layer), one malignancy logit."""

    def __init__(self, widths: tuple[int, ...], blocks: int, stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages += [_BasicBlock(cin if b == 0 else w, w, 2 if i and b == 0 else 1)
                       for b in range(blocks)]
            cin = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], 1)

    def features(self, x: Tensor) -> Tensor:
        """(B, widths[-1]): the pooled last hidden layer, the perceptual loss's space."""
        return self.stages(self.stem(x)).mean((-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))[:, 0]


def build_predictor(cfg: McWGANConfig) -> Predictor:
    return Predictor(cfg.predictor_widths, cfg.residual)


def build_critic(cfg: McWGANConfig) -> Critic:
    return Critic(cfg.critic_widths)


def build_classifier(cfg: McWGANClassifierConfig) -> NoduleClassifier:
    return NoduleClassifier(cfg.widths, cfg.blocks, cfg.stem_stride)


# -- losses -----------------------------------------------------------------------------------
def gaussian_window(size: int, sigma: float) -> Tensor:
    """(size,) normalised 1-D Gaussian (the 2-D window is its outer product: separable)."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 2.0) -> Tensor:
    """Per-image SSIM (B,) of one-channel images (Wang et al. 2004): Gaussian-weighted local
    means, variances and covariance over 'valid' windows, K1 0.01, K2 0.03, averaged over the
    map. data_range 2 for [-1, 1] images; the window shrinks to the image for tiny crops. The
    five local moments are filtered at once, separably (rows then columns)."""
    size = min(window, x.shape[-1], x.shape[-2])
    g = gaussian_window(size, sigma).to(x)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = torch.cat([x, y, x * x, y * y, x * y], 1)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(5, 1, 1, size), groups=5)
    mu_x, mu_y, xx, yy, xy = F.conv2d(maps, g.view(1, 1, -1, 1).expand(5, 1, size, 1), groups=5).unbind(1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def gradient_penalty(critic: nn.Module, baseline: Tensor, real: Tensor, fake: Tensor,
                     generator: torch.Generator) -> Tensor:
    """WGAN-GP's (||grad_x D(b, x_hat)|| - 1)^2, mean over the batch; x_hat = e real + (1 - e)
    fake with one uniform e per sample from the step's generator; `fake` must be detached."""
    e = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real)
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    score = critic(baseline, x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def reconstruction(pred: Tensor, real: Tensor, classifier: nn.Module, cfg: McWGANConfig
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """The predictor's non-adversarial loss: weighted L1 + (1 - SSIM) + perceptual distance."""
    l1 = (pred - real).abs().mean()
    one_minus_ssim = 1 - ssim(pred, real, cfg.ssim_window, cfg.ssim_sigma).mean()
    diff = classifier.features(pred) - classifier.features(real).detach()
    perceptual = diff.abs().mean() if cfg.perceptual_distance == "l1" else diff.pow(2).mean()
    total = cfg.l1_weight * l1 + cfg.ssim_weight * one_minus_ssim + cfg.perceptual_weight * perceptual
    return total, {"l1": l1, "ssim": 1 - one_minus_ssim, "perceptual": perceptual}


def gan_losses(predictor: nn.Module, critic: nn.Module, classifier: nn.Module, baseline: Tensor,
               real: Tensor, generator: torch.Generator, cfg: McWGANConfig, update_predictor: bool = True
               ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(critic loss, predictor loss, logged terms as detached tensors) of one batch. Critic: D(b, fake) - D(b, real)
    + lambda GP on the detached prediction. Predictor: reconstruction + w_adv (-D(b, fake))
    through the critic's detached parameters. Their sum's backward gives each network the
    gradient of its own objective only. Without `update_predictor` (a critic-only step of
    n_critic) the prediction runs without a graph and the predictor loss is zero."""
    with torch.set_grad_enabled(update_predictor and torch.is_grad_enabled()):
        fake = predictor(baseline)
    d_real, d_fake = critic(baseline, real), critic(baseline, fake.detach())
    gp = gradient_penalty(critic, baseline, real, fake.detach(), generator)
    critic_loss = d_fake.mean() - d_real.mean() + cfg.gp_weight * gp
    terms = {"wasserstein": (d_real.mean() - d_fake.mean()).detach(), "gp": gp.detach()}
    if not update_predictor:
        return critic_loss, critic_loss.new_zeros(()), terms
    frozen = {n: p.detach() for n, p in critic.named_parameters()}
    adversarial = -torch.func.functional_call(critic, frozen, (baseline, fake)).mean()
    recon, parts = reconstruction(fake, real, classifier, cfg)
    predictor_loss = recon + cfg.adversarial_weight * adversarial
    terms.update({k: v.detach() for k, v in parts.items()}, recon=recon.detach(),
                 adversarial=adversarial.detach())
    return critic_loss, predictor_loss, terms


# -- files ------------------------------------------------------------------------------------
def save_network(module: nn.Module, spec: dict[str, Any], out: Path, stem: str) -> None:
    """<stem>.safetensors (weights and buffers) and <stem>.json (what rebuilds it), atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(Path(out) / f"{stem}.safetensors", save(state))
    atomic_write_json(Path(out) / f"{stem}.json", spec)


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> tuple[Predictor, dict[str, Any]]:
    """The trained predictor of a cond_mcwgan folder (eval mode) and its predictor.json."""
    spec = read_json(Path(folder) / f"{PREDICTOR}.json", keys=("predictor", "crop_size", "window_hu"))
    path = Path(folder) / f"{PREDICTOR}.json"
    state = load_safetensors(Path(folder) / f"{PREDICTOR}.safetensors")
    with reading(path):
        cfg = McWGANConfig(predictor_widths=tuple(spec["predictor"]["widths"]),
                           residual=bool(spec["predictor"]["residual"]))
        model = _fill(build_predictor(cfg), state, PREDICTOR)
    return model.to(device).eval().requires_grad_(False), spec


def load_classifier(folder: Path, device: str | torch.device = "cpu") -> tuple[NoduleClassifier, dict[str, Any]]:
    """The trained nodule classifier of a classifier_mcwgan folder (eval mode, frozen)."""
    path = Path(folder) / f"{CLASSIFIER}.json"
    spec = read_json(path, keys=("classifier", "crop_size"))
    state = load_safetensors(Path(folder) / f"{CLASSIFIER}.safetensors")
    with reading(path):
        model = _fill(build_classifier(McWGANClassifierConfig.model_validate(spec["classifier"])),
                      state, CLASSIFIER)
    return model.to(device).eval().requires_grad_(False), spec


def _fill(model: nn.Module, state: dict[str, Tensor], stem: str) -> nn.Module:
    """Load `state` strictly; a mismatch is a ValueError naming the weights file."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise ValueError(f"its config does not fit {stem}.safetensors ({first})") from None
    return model


# -- `namd check` -------------------------------------------------------------------------------
def sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one GAN step on meta tensors: predictor and critic
    train, the classifier is frozen; the loss is both objectives with the gradient penalty's
    double backward."""
    cfg: McWGANConfig = config.mcwgan
    size = config.data.crop_size
    with torch.device("meta"):
        predictor, critic = build_predictor(cfg).train(), build_critic(cfg).train()
        classifier = build_classifier(cfg.classifier).eval().requires_grad_(False)

    def loss() -> Tensor:
        base, real = (torch.randn(batch, 1, size, size, device="meta") for _ in range(2))
        gen = torch.Generator()  # CPU draws, moved to meta by gradient_penalty's .to(real)
        critic_loss, predictor_loss, _ = gan_losses(predictor, critic, classifier, base, real, gen, cfg)
        return critic_loss + predictor_loss

    note = (f"{size}x{size} pixel crops; predictor {list(cfg.predictor_widths)}, critic "
            f"{list(cfg.critic_widths)}, frozen classifier {list(cfg.classifier.widths)} x "
            f"{cfg.classifier.blocks}; gradient penalty by double backward")
    return [predictor, critic], [classifier], loss, note


def stage_train_config(config: NamdConfig) -> TrainConfig:
    """The cond stage's trainer settings (mcwgan.train)."""
    return config.mcwgan.train


def classifier_sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one classifier step on meta tensors (the classifier
    stage's `namd check` sizing)."""
    cfg = config.mcwgan.classifier
    size = config.data.crop_size
    with torch.device("meta"):
        model = build_classifier(cfg).train()

    def loss() -> Tensor:
        x = torch.randn(batch, 1, size, size, device="meta")
        return F.binary_cross_entropy_with_logits(model(x), torch.zeros(batch, device="meta"))

    note = f"{size}x{size} crops; ResNet {list(cfg.widths)} x {cfg.blocks} blocks, stem stride {cfg.stem_stride}"
    return [model], [], loss, note


def classifier_train_config(config: NamdConfig) -> TrainConfig:
    """The classifier stage's trainer settings (mcwgan.classifier.train)."""
    return config.mcwgan.classifier.train
