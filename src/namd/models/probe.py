"""The linear probe h_theta of Equation 5: one linear layer on the flattened latent that
predicts malignancy (the authors' `label_head`), saved beside the VAE as safetensors; and
DDL-CXR's adaptive weight of that head's loss (`adaptive_weight`, vae.pred_weight)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from namd.run.checkpoint import load_module, save_module
from namd.run.readers import check_safetensors, reading

PROBE_FILE = "probe.safetensors"


class LinearProbe(torch.nn.Module):
    """Logit of malignancy from a (B, C, h, w) latent: Linear(C*h*w, 1) on its flattening."""

    def __init__(self, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.linear = torch.nn.Linear(int(np.prod(self.latent_shape)), 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) logits."""
        return self.linear(z.flatten(1)).squeeze(1)


ADAPTIVE_EPS = 1e-4  # DDL-CXR's calculate_adaptive_label_weight: denominator guard
ADAPTIVE_MAX = 1e4  # ... and its clamp


def adaptive_weight(nll: torch.Tensor, label_loss: torch.Tensor, layer: torch.Tensor,
                    pixels: int = 1) -> torch.Tensor:
    """DDL-CXR's label weight (Yao et al. 2024, AutoencoderKLLabel): ||d nll / d layer|| /
    (||d label_loss / d layer|| + 1e-4), clamped to [0, 1e4] and detached, `layer` being the
    encoder's last convolution weight, so the label head's gradient there matches the
    reconstruction's. The source's nll is summed over an image's `pixels` (C x H x W) and
    averaged over the batch; namd's L_rec averages over pixels, so the ratio is taken in the
    source's units (nll x pixels, which the guard and the clamp act on) and returned in L_rec's
    (divided by pixels): rec + w x label here is the source's loss divided by `pixels`."""
    g_nll = torch.autograd.grad(nll, layer, retain_graph=True)[0]
    g_label = torch.autograd.grad(label_loss, layer, retain_graph=True)[0]
    weight = pixels * torch.linalg.vector_norm(g_nll) / (torch.linalg.vector_norm(g_label) + ADAPTIVE_EPS)
    return torch.clamp(weight, 0.0, ADAPTIVE_MAX).detach() / pixels


def save_probe(probe: LinearProbe, stage_dir: Path) -> Path:
    """Write the probe's weights (its latent shape goes into the safetensors metadata)."""
    path = Path(stage_dir) / PROBE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_module(probe, tmp, metadata={"latent_shape": ",".join(map(str, probe.latent_shape))})
    tmp.replace(path)
    return path


def load_probe(stage_dir: Path) -> LinearProbe:
    """The probe of a finished VAE stage (RunFileError when it is missing or damaged)."""
    path = Path(stage_dir) / PROBE_FILE
    meta = check_safetensors(path, "vae")
    with reading(path, "vae"):
        probe = LinearProbe(tuple(int(s) for s in meta["latent_shape"].split(",")))
        load_module(probe, path)
    return probe.eval().requires_grad_(False)
