"""`namd check` and namd.sizing: parameter counts of the paper preset on the meta device, the
memory arithmetic, the saved-tensor count, and agreement with a measured peak."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from namd import sizing
from namd.cli.commands.check import batch_sizes
from namd.cli.main import main
from namd.config import load_config
from namd.models.unet import build_unet, count_parameters

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


def test_paper_prior_is_sd15_and_cond_widens_it(paper):
    prior = sizing.estimate_stage(paper, "prior", batch=2)
    tokens, width = sizing.prior_context_shape(paper, (paper.text.n_prompt_sets, 2560))
    assert paper.diffusion.null_context == "empty_prompt"
    assert (tokens, width) == (77, 768)
    assert prior.params == prior.trainable == 859_520_964  # diffusers' SD1.5 U-Net
    cond = sizing.estimate_stage(paper, "cond", batch=1)
    with torch.device("meta"):
        unet = build_unet(paper.diffusion.unet, in_channels=8, out_channels=4, cross_attention_dim=2560,
                          sample_size=8)
    prompts = paper.text.n_prompt_sets * paper.text.n_prompt_tokens * 2560
    assert cond.trainable == count_parameters(unet) + prompts
    # MedGemma 1.5 4B's text tower (Gemma 3 4B): 3.88B frozen parameters
    assert 3.85e9 < cond.params - cond.trainable < 3.91e9
    # NF4: the frozen model costs well under a byte per parameter; trainable ones 4 + 4 + 8 bytes
    frozen_bytes = cond.weights - 4 * cond.trainable
    assert 0.5 * (cond.params - cond.trainable) < frozen_bytes < 1.0 * (cond.params - cond.trainable)
    assert (cond.grads, cond.adam) == (4 * cond.trainable, 8 * cond.trainable)


def test_total_and_verdict_arithmetic():
    est = sizing.StageEstimate("x", 4, params=10, trainable=5, weights=int(20e9), grads=int(5e9),
                               adam=int(10e9), activations=int(3e9), step_temp=int(5e9))
    assert est.total == int(40e9)  # max(activations, step_temp) = 5e9
    assert est.fits(40 + sizing.HEADROOM / 1e9) and not est.fits(41)


def test_nf4_bfloat16_float32_bytes_of_a_frozen_model():
    lm = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 128, bias=False))
    n_emb, n_lin = 100 * 64, 64 * 128
    assert sizing.frozen_lm_bytes(lm, "float32") == 4 * (n_emb + n_lin)
    assert sizing.frozen_lm_bytes(lm, "bfloat16") == 2 * (n_emb + n_lin)
    assert sizing.frozen_lm_bytes(lm, "nf4") == int(0.5625 * n_lin + 2 * n_emb)


def test_saved_tensor_bytes_counts_each_storage_once_and_skips_parameters():
    w = nn.Linear(8, 8, bias=False)

    def loss() -> torch.Tensor:
        x = torch.randn(4, 8, requires_grad=True)
        h = torch.sin(x)            # saves x (128 B)
        view = h.view(2, 16)        # a view of h ...
        return (view * view).sum() + w(h).sum()  # ... saved by mul and by the linear: once (128 B)

    assert sizing.saved_tensor_bytes(loss, [w]) == 2 * 4 * 8 * 4


def test_meta_count_and_autocast_emulation_match_real_cpu_tensors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 4, 3),
                        nn.Flatten(), nn.Linear(64, 2))
    meta = copy.deepcopy(net).to("meta")
    x, xm = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8, device="meta")

    def loss(n: nn.Module, inp: torch.Tensor):
        return lambda: n(inp).pow(2).mean()

    assert sizing.saved_tensor_bytes(loss(meta, xm), [meta]) == sizing.saved_tensor_bytes(loss(net, x), [net])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = sizing.saved_tensor_bytes(loss(net, x), [net])
    with sizing._Autocast(torch.bfloat16, "cpu"):
        emulated = sizing.saved_tensor_bytes(loss(meta, xm), [meta])
    assert emulated == pytest.approx(real, rel=0.02) and real < 0.7 * sizing.saved_tensor_bytes(loss(net, x), [net])


def test_activations_grow_linearly_with_batch():
    tiny = load_config("tiny")
    a2, a4 = (sizing.estimate_stage(tiny, "evaluator", batch=b, device="cpu").activations for b in (2, 4))
    assert a4 == pytest.approx(2 * a2, rel=0.05)


def test_batch_size_arguments():
    assert batch_sizes(["3", "cond=8"]) == {"vae": 3, "prior": 3, "cond": 8, "evaluator": 3}
    for bad in (["unet=3"], ["cond=0"], ["x"]):
        with pytest.raises(ValueError, match="--batch-size"):
            batch_sizes(bad)


def test_check_prints_a_row_per_stage_and_a_verdict(capsys):
    assert main(["check", "--set", "text.encoder=structured", "--set", "text.structured.dim=16"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in sizing.train_kinds()]
    assert [r[0] for r in rows] == list(sizing.train_kinds()) and all(r[-1] == "yes" for r in rows)
    assert main(["check", "--set", "text.encoder=structured", "--set", "text.structured.dim=16",
                 "--gpu-gb", "2.5", "--batch-size", "vae=4096"]) == 0
    verdicts = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()
                if line.split()[:1] and line.split()[0] in sizing.train_kinds()}
    assert verdicts["vae"] == "no" and verdicts["prior"] == "yes"


def test_estimate_agrees_with_the_peak_of_a_real_step(tmp_path):
    """benchmarks/paper_size.py's child runs two real training steps (VAETask, AdamW) of the
    tiny preset's VAE in its own process; its peak resident memory must be within 25%."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "paper_size.py"), "--child", "vae", "--preset", "tiny",
           "--lm-dir", "minilm", "--child-batch", "8", "--threads", "1"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "NAMD_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    config = load_config("tiny", overrides=["text.standardize=false", "text.model=minilm"])
    est = sizing.estimate_stage(config, "vae", batch=8, device="cpu")
    assert est.activations > 3 * (est.weights + est.grads + est.adam)  # activations matter here
    assert abs(est.total / measured - 1) < 0.25, (est.total, measured)


def test_the_compared_methods_are_sized_at_the_papers_sizes(paper):
    """SD1.5's row: SD1.5's U-Net widened to 8 inputs on CLIP ViT-L/14's 77 x 768 token states
    (frozen, 123M); every compared stage has a row; one that does not fit says what would."""
    sd15 = sizing.estimate_stage(paper, "cond_sd15", batch=1)
    with torch.device("meta"):
        unet = build_unet(paper.diffusion.unet, in_channels=8, out_channels=4, cross_attention_dim=768,
                          sample_size=8)
    assert sd15.trainable == count_parameters(unet)
    assert 120e6 < sd15.params - sd15.trainable < 126e6  # CLIP ViT-L/14's text tower
    assert {"cond_sd15", "cond_flux", "cond_ddlcxr"} <= set(sizing.train_kinds())
    big = sizing.StageEstimate("cond_x", 1, params=12, trainable=int(12e9), weights=int(48e9),
                               grads=int(48e9), adam=int(96e9), activations=int(1e9), step_temp=int(48e9))
    line = sizing.advice(big, 48)
    assert "does not fit 48 GB" in line and "8-bit AdamW it would need 168.0 GB (fits: no)" in line
    assert "needs 25.9 GB before activations, which must then stay under 20.1 GB (here 1.0 GB" in line
