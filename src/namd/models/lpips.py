"""L_LPIPS of Equation 6 (the authors' reconstruction loss adds LPIPS at weight 1), read from a
local safetensors file and built without torchvision.

The `lpips` package builds its VGG-16 backbone through torchvision, which on this project's CPU
machines pulls a several-GB CUDA build of torch. This module rebuilds the same layout (the
ImageNet scaling layer, VGG-16's five ReLU slices, the 1x1 linear heads) with plain torch
modules and the *same state-dict keys* as `lpips.LPIPS(net="vgg")`, so the official weights load
unchanged once converted (docs/paper-preset.md, "LPIPS weights"); the same network serves
L_LPIPS in VAE training (`vae.lpips_weights`) and Table 1's LPIPS column in `namd evaluate`
(`eval.lpips_weights`, namd.evaluation.perceptual):

    # once, on any machine with lpips and torchvision (the official v0.1 VGG weights)
    import lpips, safetensors.torch as st
    st.save_file(lpips.LPIPS(net="vgg").state_dict(), "lpips_vgg.safetensors")

The forward pass follows lpips 0.1 (normalize=False: inputs already in [-1, 1]): scale, take
each slice's features, unit-normalise over channels, square the differences, weight them with
the linear heads, average over space and sum over the five layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's VGG-16 `features`: conv widths between the max-pools; lpips cuts it after each
# block's last ReLU (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: indices 4, 9, 16, 23, 30)
VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# lpips' ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg_features(widths: tuple[tuple[int, ...], ...]) -> list[nn.Module]:
    """torchvision's VGG-16 `features` list for the given conv widths (index-compatible)."""
    layers: list[nn.Module] = []
    channels = 3
    for level, block in enumerate(widths):
        if level:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        for width in block:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = width
    return layers


class _Slices(nn.Module):
    """The backbone as lpips' `net`: slice1..slice5 keeping torchvision's layer indices."""

    def __init__(self, widths: tuple[tuple[int, ...], ...]):
        super().__init__()
        layers, start = vgg_features(widths), 0
        ends = [sum(len(b) * 2 for b in widths[: i + 1]) + i for i in range(len(widths))]
        for i, end in enumerate(ends, start=1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), layers[index])
            setattr(self, f"slice{i}", block)
            start = end
        self.n = len(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU output of every slice."""
        outs = []
        for i in range(1, self.n + 1):
            x = getattr(self, f"slice{i}")(x)
            outs.append(x)
        return outs


class _Linear(nn.Module):
    """lpips' NetLinLayer: dropout (index 0, a no-op in eval) then a 1x1 conv to one channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSNet(nn.Module):
    """LPIPS with the VGG layout; `widths` default to VGG-16 (tests build a narrower one)."""

    def __init__(self, widths: tuple[tuple[int, ...], ...] = VGG16_WIDTHS):
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _Slices(widths)
        for i, block in enumerate(widths):
            setattr(self, f"lin{i}", _Linear(block[-1]))
        self.n = len(widths)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance (B,) between two batches in [-1, 1] with 3 channels."""
        return self.distance(self.features(x), self.features(y))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised activations of every slice for a batch in [-1, 1]; apart from
        `distance` so that evaluation computes the real crops' once for all K samples."""
        return [_unit(f) for f in self.net(self.scaling_layer(x))]

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """Per-image LPIPS (B,) between two `features` outputs: the heads' weighted squared
        differences, averaged over space, summed over the slices."""
        total = fx[0].new_zeros(fx[0].shape[0])
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            total = total + getattr(self, f"lin{i}")((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total


class _Scaling(nn.Module):
    """lpips' ScalingLayer: (x - shift) / scale with ImageNet statistics (saved buffers)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """lpips' normalize_tensor: unit length over channels at every position."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def widths_of(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """The conv widths a VGG-layout LPIPS state dict holds, slice by slice (for narrow test nets)."""
    widths = []
    for i in range(1, 6):
        convs = sorted((int(k.split(".")[2]), v.shape[0]) for k, v in state.items()
                       if k.startswith(f"net.slice{i}.") and k.endswith(".weight"))
        if not convs:
            break
        widths.append(tuple(w for _, w in convs))
    return tuple(widths)


def _fold_lins(state: dict[str, torch.Tensor], path: Path,
               field: str = "vae.lpips_weights") -> dict[str, torch.Tensor]:
    """lpips.LPIPS also registers its heads as the ModuleList `lins`, so its state dict holds
    every head twice (lin0.* and lins.0.*): keep one name, after checking the copies agree."""
    out = {k: v for k, v in state.items() if not k.startswith("lins.")}
    for key, value in state.items():
        if key.startswith("lins."):
            _, index, rest = key.split(".", 2)
            name = f"lin{index}.{rest}"
            if name in out and not torch.equal(out[name], value):
                raise ValueError(f"{field}: {path}: {key} differs from {name}")
            out.setdefault(name, value)
    return out


def read_weights(path: str | Path, field: str, section: str) -> dict[str, torch.Tensor]:
    """Every tensor of a local safetensors weights file, or a one-line error naming the config
    `field` and the file (missing, not .safetensors, unreadable) and the docs `section` that
    says how to make it. Shared by the LPIPS and FID Inception loaders: nothing is unpickled,
    nothing downloaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {path} not found (local weights, never downloaded: "
                                f"docs/paper-preset.md, '{section}')")
    if path.suffix != ".safetensors":
        raise ValueError(f"{field}: {path} must be a .safetensors file (nothing is unpickled)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{field}: {path} is not a readable safetensors file ({reason})") from exc


def load_lpips(path: str | Path, field: str = "vae.lpips_weights") -> LPIPSNet:
    """The frozen LPIPS network of a local safetensors file (every key and shape must match);
    `field` is the config field that named the file, for the one-line errors."""
    path = Path(path).expanduser()
    state = read_weights(path, field, "LPIPS weights")
    state = _fold_lins(state, path, field)
    widths = widths_of(state)
    if len(widths) != 5:
        raise ValueError(f"{field}: {path} holds no VGG-layout LPIPS weights (keys "
                         "net.slice1-5.*, lin0-4.model.1.weight, as lpips.LPIPS(net='vgg') saves)")
    net = LPIPSNet(widths)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{field}: {path} does not fit the LPIPS VGG layout: "
                         f"{' '.join(str(exc).split())[:300]}") from exc
    return net.eval().requires_grad_(False)
