"""The linear probe h_theta of Equation 5: one linear layer on the flattened latent that
predicts malignancy (the authors' `label_head`), saved beside the VAE as safetensors."""

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
