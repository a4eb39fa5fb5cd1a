"""Stored-output regression test: fixed tiny weights, fixed inputs, stored expected outputs.

The weights under tests/fixtures/regression/ are loaded (never re-initialised) and run on
stored inputs: (1) VAE encode/decode of 4 synthetic crops, (2) a few DDIM steps of the
conditional U-Net from stored noise, baseline latents and context (no language model: the
context is a stored tensor), (3) the evaluator's malignancy probabilities of the 4 crops.
The results must match the stored ones. A failure means a change in the model code, in the
sampling code or in a dependency (torch, diffusers, transformers) changed what the models
compute; if that change is intended, regenerate the fixtures with
tests/fixtures/regression/make_fixtures.py (see its docstring), never before checking.

Tolerances: float32 results depend on thread counts, BLAS builds (MKL, OpenBLAS, Accelerate)
and CPU vector width, which reorder sums and change the last few bits; over a handful of
layers that is ~1e-6 relative. atol 1e-4 on latents and U-Net outputs (values of order 1) and
1e-5 on probabilities leaves that room while still catching any real change (a changed
layer, scale factor, scheduler setting or weight layout moves values by 1e-2 or more). The
decoded crops are in HU (a 1400 HU window mapped to [-1, 1]), so their 1e-4 in network units
is 0.07 HU: atol 0.1 HU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from namd.config import EvaluatorConfig
from namd.inference.sampler import decode_to_hu, denoise, encode_hu
from namd.models.evaluator import build_evaluator, predict
from namd.models.schedules import load_scheduler_config
from namd.models.unet import load_unet
from namd.models.vae import load_trained_vae

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "regression"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import fixture_config  # noqa: E402

LATENT_ATOL = 1e-4
HU_ATOL = 0.1
PROB_ATOL = 1e-5


def load_models(folder: Path) -> dict[str, Any]:
    """The stored VAE (+ scale factor), U-Net, training schedule and evaluator."""
    vae, scale = load_trained_vae(folder / "vae")
    spec = json.loads((folder / "evaluator.json").read_text())
    evaluator = build_evaluator(EvaluatorConfig.model_validate(spec["evaluator"]), spec["image_size"])
    evaluator.load_state_dict(load_file(str(folder / "evaluator.safetensors")), strict=True)
    return {"vae": vae, "scale": scale, "unet": load_unet(folder),
            "schedule": load_scheduler_config(folder), "evaluator": evaluator.eval()}


@torch.inference_mode()
def compute_outputs(models: dict[str, Any], inputs: dict[str, np.ndarray], config: Any
                    ) -> dict[str, np.ndarray]:
    """Everything the test compares, through the same functions sampling and evaluation use."""
    window = tuple(config.data.window_hu)
    latents = encode_hu(models["vae"], inputs["crops"], models["scale"], window, batch=4)
    decoded = decode_to_hu(models["vae"], latents, models["scale"], window, batch=4)
    context = torch.from_numpy(inputs["context"])
    ddim = denoise(models["unet"], models["schedule"], config.sampling,
                   torch.from_numpy(inputs["noise"]), torch.from_numpy(inputs["baseline"]),
                   context, torch.zeros_like(context[0]), generators=[])
    probs, _ = predict(models["evaluator"], inputs["crops"], window)
    return {"latents": latents.numpy(), "decoded": decoded, "ddim": ddim.numpy(),
            "probabilities": probs}


@pytest.fixture(scope="module")
def outputs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(computed, stored) outputs of the stored models on the stored inputs."""
    inputs = dict(np.load(FIXTURES / "inputs.npz"))
    computed = compute_outputs(load_models(FIXTURES), inputs, fixture_config())
    return computed, dict(np.load(FIXTURES / "expected.npz"))


def _close(name: str, outputs: tuple[dict, dict], atol: float) -> None:
    """Assert one output matches its stored value, naming the largest deviation."""
    computed, stored = outputs
    got, want = computed[name], stored[name]
    assert got.shape == want.shape, f"{name}: shape {got.shape} != stored {want.shape}"
    worst = float(np.max(np.abs(got - want)))
    assert np.allclose(got, want, rtol=0, atol=atol), f"{name}: max |diff| {worst:.3g} > {atol}"


def test_fixture_weights_are_small_and_nontrivial() -> None:
    """The stored weights stay small (< 2 MB) and the stored outputs are not degenerate."""
    weights = sum(p.stat().st_size for p in FIXTURES.rglob("*.safetensors"))
    assert weights < 2_000_000, f"{weights} bytes of fixture weights"
    stored = np.load(FIXTURES / "expected.npz")
    assert stored["latents"].std() > 1e-3 and stored["ddim"].std() > 1e-3
    assert len(np.unique(np.round(stored["probabilities"], 6))) == 4


def test_vae_latents_match_stored(outputs) -> None:
    """VAE posterior-mean latents (scaled) of the 4 crops."""
    _close("latents", outputs, LATENT_ATOL)


def test_vae_reconstructions_match_stored(outputs) -> None:
    """Decoded crops in HU."""
    _close("decoded", outputs, HU_ATOL)


def test_ddim_steps_match_stored(outputs) -> None:
    """A few DDIM steps of the conditional U-Net from stored noise, baseline and context."""
    _close("ddim", outputs, LATENT_ATOL)


def test_evaluator_probabilities_match_stored(outputs) -> None:
    """The evaluator's malignancy probabilities of the 4 crops."""
    _close("probabilities", outputs, PROB_ATOL)
