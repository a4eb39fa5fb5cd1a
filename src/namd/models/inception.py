"""The FID Inception-v3 (pool features, 2048-d), read from a local safetensors file and built
without torchvision.

FID is defined on the features of one particular network: the TensorFlow Inception of
2015-12-05, which pytorch-fid ports as `pytorch_fid.inception.InceptionV3` (torchvision's
Inception3 with four blocks patched: average pools that leave the zero padding out of the mean,
and a max pool in the last block). pytorch-fid and torchvision are not used here (torchvision
pulls a several-GB CUDA torch onto the CPU machines); this module rebuilds the same network with
plain torch modules under the *same state-dict keys* as InceptionV3's `blocks` (output block 3,
the final average pool), so the official weights load unchanged once converted
(docs/paper-preset.md, 'FID weights'):

    # once, on any machine with pytorch-fid (it downloads pt_inception-2015-12-05-6726825d.pth)
    import safetensors.torch as st
    from pytorch_fid.inception import InceptionV3
    st.save_file(InceptionV3([3]).state_dict(), "fid_inception.safetensors")

    # or from the released .pth itself, no pytorch-fid or torchvision needed (its keys are the
    # torchvision module names, Conv2d_1a_3x3.* ... fc.*; load_inception renames them)
    import torch, safetensors.torch as st
    st.save_file(torch.load("pt_inception-2015-12-05-6726825d.pth", weights_only=True),
                 "fid_inception.safetensors")

The forward pass is pytorch-fid's with resize_input=True and normalize_input=False: a bilinear
resize to 299 x 299 (align_corners=False), inputs already in [-1, 1], the four blocks, the
2048 pooled channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from namd.models.lpips import read_weights

FID_SIZE = 299  # the input size the TF Inception was trained at; pytorch-fid resizes to it
FEATURES = 2048  # channels of the final average pool (pytorch-fid's default block 3)
BN_EPS = 1e-3  # the TF port's batch-norm epsilon (torchvision's BasicConv2d)

# torchvision's module names of the modules InceptionV3.blocks holds, in order: the .pth release
# uses these names (and adds fc.*, the 1008-class head FID does not use)
TORCHVISION_NAMES = {
    "Conv2d_1a_3x3": "blocks.0.0", "Conv2d_2a_3x3": "blocks.0.1", "Conv2d_2b_3x3": "blocks.0.2",
    "Conv2d_3b_1x1": "blocks.1.0", "Conv2d_4a_3x3": "blocks.1.1",
    "Mixed_5b": "blocks.2.0", "Mixed_5c": "blocks.2.1", "Mixed_5d": "blocks.2.2",
    "Mixed_6a": "blocks.2.3", "Mixed_6b": "blocks.2.4", "Mixed_6c": "blocks.2.5",
    "Mixed_6d": "blocks.2.6", "Mixed_6e": "blocks.2.7",
    "Mixed_7a": "blocks.3.0", "Mixed_7b": "blocks.3.1", "Mixed_7c": "blocks.3.2",
}


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: keys conv.* and bn.*."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool whose mean leaves the zero padding out, as TensorFlow's does
    (the FID patch of InceptionA/C/E; torchvision counts the padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    """x through the layers in turn."""
    for layer in layers:
        x = layer(x)
    return x


class MixedA(nn.Module):
    """Mixed_5b-5d (35 x 35): 1x1, 5x5, double 3x3 and pooled branches (FIDInceptionA)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class ReductionB(nn.Module):
    """Mixed_6a (35 -> 17): strided 3x3, strided double 3x3 and max-pool branches (unpatched)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedC(nn.Module):
    """Mixed_6b-6e (17 x 17): factorised 7x7 branches of width `c7` (FIDInceptionC)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row = {"kernel": (1, 7), "padding": (0, 3)}  # a 1x7 convolution keeping the size
        col = {"kernel": (7, 1), "padding": (3, 0)}  # a 7x1 one
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                        self.branch7x7dbl_4, self.branch7x7dbl_5)
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          double, self.branch_pool(_tf_avg_pool(x))], 1)


class ReductionD(nn.Module):
    """Mixed_7a (17 -> 8): strided 3x3, 7x7-then-strided-3x3 and max-pool branches (unpatched)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                       self.branch7x7x3_4)
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedE(nn.Module):
    """Mixed_7b / 7c (8 x 8): split 1x3 / 3x1 branches. The pooled branch averages without the
    padding in Mixed_7b (FIDInceptionE_1) and takes the maximum in Mixed_7c (FIDInceptionE_2:
    the TF graph's max pool, kept because the weights were fitted with it)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"MixedE pool must be 'avg' or 'max', not {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = (_tf_avg_pool(x) if self.pool == "avg"
                  else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
                          self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """pytorch-fid's InceptionV3(output_blocks=[3]) as four `blocks`: (B, 3, H, W) in [-1, 1]
    -> (B, 2048) pool features."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(ConvBN(3, 32, 3, stride=2), ConvBN(32, 32, 3),
                          ConvBN(32, 64, 3, padding=1), nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(ConvBN(64, 80, 1), ConvBN(80, 192, 3), nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(MixedA(192, 32), MixedA(256, 64), MixedA(288, 64), ReductionB(288),
                          MixedC(768, 128), MixedC(768, 160), MixedC(768, 160), MixedC(768, 192)),
            nn.Sequential(ReductionD(768), MixedE(1280, "avg"), MixedE(2048, "max"),
                          nn.AdaptiveAvgPool2d((1, 1))),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features (B, 2048) of images (B, 3, H, W) in [-1, 1], resized to 299 first."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FID Inception input {tuple(x.shape)}: need (B, 3, H, W) in [-1, 1]")
        x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the released .pth (torchvision names, fc.* head) -> InceptionV3.blocks keys;
    a state dict already in the blocks layout is returned as it is."""
    if any(k.startswith("blocks.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in TORCHVISION_NAMES:
            out[f"{TORCHVISION_NAMES[head]}.{rest}"] = value
        elif head not in ("fc", "AuxLogits"):
            out[key] = value  # left for the strict check to name
    return out


def load_inception(path: str | Path, field: str = "eval.fid_weights") -> FIDInception:
    """The frozen FID Inception of a local safetensors file: every key and shape must match
    (batch-norm `num_batches_tracked` counters may be absent: old .pth files lack them and they
    play no part in evaluation)."""
    path = Path(path).expanduser()
    state = _renamed(read_weights(path, field, "FID weights"))
    net = FIDInception()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{field}: {path} does not hold pytorch-fid's InceptionV3 weights "
                         f"({len(missing)} keys missing, e.g. {missing[:2]}; {len(unexpected)} "
                         f"unexpected, e.g. {unexpected[:2]}): docs/paper-preset.md, 'FID weights'")
    bad = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"{field}: {path} does not fit the FID Inception layout: {bad[0]}"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False)
