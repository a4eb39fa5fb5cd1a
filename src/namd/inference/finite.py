"""Every number NAMDPipeline returns is finite, or the call fails in one line naming the weights.

NaN written into a network's weights does not stop it: the U-Net then draws NaN latents, the
VAE decodes NaN crops and the evaluator scores them NaN, and "p = nan +- nan" would pass on to
`namd predict`, the API and `namd serve`. These checks sit where the numbers leave the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from namd.run.contract import DIFFUSERS_WEIGHTS, RunFileError

EXPORT_REMEDY = ("export the model again from a run whose weights are sound "
                 "(`namd export RUN OUT`), or retrain the damaged stage")


def _weights(files: Mapping[str, Path], prefix: str) -> Path:
    """The weight file of a component of a loaded model (model-folder path -> file)."""
    found = [p for rel, p in files.items() if rel.startswith(prefix) and rel.endswith(".safetensors")]
    return found[0] if found else Path(prefix)


def _remedy(run: Any) -> str | None:
    """The contract's remedy for a run's file (None), or how to replace an exported model."""
    return None if run is not None else EXPORT_REMEDY


def check_samples(samples: np.ndarray, files: Mapping[str, Path], run: Any = None) -> np.ndarray:
    """`samples` (N, K, H, W) when all finite; else a RunFileError naming the conditional U-Net's
    weights (with the VAE's, which decodes them) and the first patient and sample affected."""
    ok = np.isfinite(samples).all(axis=(-2, -1))
    if ok.all():
        return samples
    i, k = (int(v) for v in np.argwhere(~ok)[0])
    vae = _weights(files, "vae/")
    raise RunFileError(_weights(files, f"unet/{DIFFUSERS_WEIGHTS}"),
                       f"{int((~ok).sum())} of {ok.size} virtual follow-ups hold NaN or inf "
                       f"(first: baseline {i}, sample {k + 1}): these U-Net weights, or the VAE's "
                       f"({vae}), are damaged or diverged", _remedy(run))


def check_probabilities(p: np.ndarray, files: Mapping[str, Path], run: Any = None) -> np.ndarray:
    """Probabilities when all finite; else a RunFileError naming the evaluator's weights."""
    p = np.asarray(p)
    if np.isfinite(p).all():
        return p
    raise RunFileError(_weights(files, "evaluator/"),
                       f"the evaluator gives {int((~np.isfinite(p)).sum())} of {p.size} "
                       "probabilities as NaN or inf on finite crops: its weights (or "
                       "calibration.json) are damaged", _remedy(run))


def check_weights(modules: Mapping[str, Any], files: Mapping[str, Path], run: Any = None) -> None:
    """Every parameter and buffer of the loaded networks (model-folder prefix -> module) is
    finite, else a RunFileError naming that component's weight file: `namd export` never
    publishes a model whose weights diverged to NaN."""
    import torch

    for prefix, module in modules.items():
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise RunFileError(_weights(files, prefix), f"{prefix.rstrip('/')} tensor {name} "
                                   "holds NaN or inf: the model is not exported",
                                   _remedy(run) or "retrain the stage that wrote it")
