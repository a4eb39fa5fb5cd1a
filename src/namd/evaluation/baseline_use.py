"""What the baseline buys: how much the conditional U-Net's noise prediction relies on z_baseline.

A one-year follow-up is mostly its baseline plus a change, so a conditional model that uses
z^(1) (Equation 10) must predict the noise far better with the true baseline than with another
pair's. Measured on held-out pairs with the same timesteps and noise draws for every variant:

    true       || eps - eps_theta(z1_i,  z2_t, t, C_i) ||^2
    shuffled   || eps - eps_theta(z1_j,  z2_t, t, C_i) ||^2   (j != i: a derangement of the pairs)
    prior      || eps - eps_prior(z2_t, t, null) ||^2        (stage 1 on the same follow-ups)

`ratio` = mean(true) / mean(shuffled) over a uniform grid of timesteps (far below 1 when the
baseline is used; 1 when it is ignored), also per timestep band. A check that training and
sampling agree (scale factor, rotation, channel order): at a high timestep the model's
x0-prediction should lie nearer its own z_baseline than any other pair's
(`x0_nearest_own_baseline`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BASELINE_USE_FILE = "baseline_use.json"  # in the cond stage's folder

BANDS = ((0, 100), (100, 300), (300, 600), (600, 1000))
X0_CHECK_T = 800  # "a high timestep": abar ~ 0.05 on the paper's schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""eps_theta(z_t, t, baseline, context) -> predicted noise; the prior ignores `baseline`."""


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (each pair gets another's baseline)."""
    if n < 2:
        raise ValueError(f"shuffling baselines needs at least two pairs, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)  # a single cycle through a random order
    return out


def timestep_grid(num_train_timesteps: int, n: int) -> np.ndarray:
    """`n` timesteps at the midpoints of equal slices of [0, T): an even cover of the schedule."""
    edges = np.linspace(0, num_train_timesteps, n + 1)
    return np.unique(np.clip(((edges[:-1] + edges[1:]) / 2).astype(np.int64), 0,
                             num_train_timesteps - 1))


@torch.no_grad()
def _errors(eps_fn: EpsFn, noisy: torch.Tensor, t: torch.Tensor, baseline: torch.Tensor,
            context: torch.Tensor, noise: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-item mean squared noise-prediction error, `batch` items per call."""
    out = []
    for s in range(0, len(noisy), batch):
        sl = slice(s, s + batch)
        pred = eps_fn(noisy[sl], t[sl], baseline[sl], context[sl]).float()
        out.append((pred - noise[sl].float()).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def _band_rows(t: np.ndarray, losses: dict[str, np.ndarray]) -> list[dict]:
    """Mean of each loss per timestep band, and the true / shuffled ratio."""
    rows = []
    for lo, hi in BANDS:
        keep = (t >= lo) & (t < hi)
        if not keep.any():
            continue
        row: dict = {"t": [lo, hi], "n": int(keep.sum())}
        row.update({name: float(v[keep].mean()) for name, v in losses.items()})
        row["ratio"] = row["true"] / row["shuffled"]
        rows.append(row)
    return rows


@torch.no_grad()
def measure(cond_eps: EpsFn, prior_eps: EpsFn | None, alphas_cumprod: torch.Tensor,
            z1: torch.Tensor, z2: torch.Tensor, context: torch.Tensor, null: torch.Tensor,
            n_timesteps: int = 20, seed: int = 0, batch: int = 256) -> dict:
    """The baseline-use measures of one conditional model on pairs (z1, z2) with contexts C.

    z1, z2: (N, C, h, w) scaled latents; context: (N, m, D); null: (m, D). Every pair is scored
    at every timestep of an even grid with its own fixed noise draw, so two models measured
    with the same seed see the same inputs.
    """
    n = len(z1)
    if len(z2) != n or len(context) != n:
        raise ValueError(f"baseline use: {n} baselines, {len(z2)} follow-ups, {len(context)} contexts")
    abar = alphas_cumprod.double()
    grid = timestep_grid(len(abar), n_timesteps)
    pair = np.repeat(np.arange(n), len(grid))
    t = torch.as_tensor(np.tile(grid, n))
    noise = torch.randn((len(pair), *z2.shape[1:]), generator=torch.Generator().manual_seed(seed))
    a = abar[t].float().view(-1, 1, 1, 1)
    target = z2[pair].float()
    noisy = a.sqrt() * target + (1 - a).sqrt() * noise
    ctx = context[pair]
    other = torch.as_tensor(derangement(n, seed))[pair]
    losses = {"true": _errors(cond_eps, noisy, t, z1[pair], ctx, noise, batch),
              "shuffled": _errors(cond_eps, noisy, t, z1[other], ctx, noise, batch)}
    if prior_eps is not None:
        nulls = null.expand(len(pair), *null.shape)
        losses["prior"] = _errors(prior_eps, noisy, t, z1[pair], nulls, noise, batch)
    arrays = {k: v.double().numpy() for k, v in losses.items()}
    result: dict = {"n_pairs": n, "timesteps": grid.tolist(), "seed": seed}
    result.update({f"loss_{k}": float(v.mean()) for k, v in arrays.items()})
    result["ratio"] = result["loss_true"] / result["loss_shuffled"]
    if prior_eps is not None:
        result["ratio_to_prior"] = result["loss_true"] / result["loss_prior"]
    result["bands"] = _band_rows(t.numpy(), arrays)
    result.update(x0_check(cond_eps, abar, z1, z2, context, seed, batch))
    return result


@torch.no_grad()
def x0_check(cond_eps: EpsFn, abar: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
             context: torch.Tensor, seed: int, batch: int, t_check: int = X0_CHECK_T) -> dict:
    """Share of pairs whose x0-prediction at a high timestep is nearest (L2) to its own baseline
    among all pairs' baselines; chance is 1 / N."""
    n = len(z1)
    t_check = min(t_check, len(abar) - 1)
    noise = torch.randn(z2.shape, generator=torch.Generator().manual_seed(seed + 1))
    a = float(abar[t_check])
    noisy = a ** 0.5 * z2.float() + (1 - a) ** 0.5 * noise
    t = torch.full((n,), t_check, dtype=torch.long)
    eps = torch.cat([cond_eps(noisy[s:s + batch], t[s:s + batch], z1[s:s + batch],
                              context[s:s + batch]).float() for s in range(0, n, batch)])
    x0 = (noisy - (1 - a) ** 0.5 * eps) / a ** 0.5
    dist = torch.cdist(x0.flatten(1).double(), z1.flatten(1).double())
    own = dist.argmin(1) == torch.arange(n)
    return {"x0_t": t_check, "x0_nearest_own_baseline": float(own.double().mean()),
            "x0_chance": 1.0 / n}


def summary_line(result: dict) -> str:
    """One log line: the ratio overall and per band."""
    bands = ", ".join(f"t {b['t'][0]}-{b['t'][1]}: {b['ratio']:.2f}" for b in result["bands"])
    prior = (f", true / prior {result['ratio_to_prior']:.2f}" if "ratio_to_prior" in result else "")
    return (f"baseline use on {result['n_pairs']} pairs: loss true / shuffled baseline "
            f"{result['ratio']:.2f} ({bands}){prior}; x0 nearest own baseline "
            f"{100 * result['x0_nearest_own_baseline']:.0f}%")


@torch.no_grad()
def measure_cond_stage(task, prior_dir: Path, val, seed: int) -> dict:
    """`measure` for a trained cond stage (a namd.training.diffusion.CondTask and its validation
    LatentPairs), beside the prior of `prior_dir`; models of either parameterisation are scored
    on the noise they imply."""
    from namd.models.null_context import load_null
    from namd.models.schedules import as_epsilon, load_scheduler_config, model_output
    from namd.models.unet import load_unet

    device = next(task.unet.parameters()).device
    z1 = val.store.upright(val.base).to(device)
    z2 = val.store.upright(val.follow).to(device)
    task.encoder.eval()
    task.unet.eval()
    context = torch.cat([task.context(val.ehrs[s:s + 64], None, False, device)
                         for s in range(0, len(val), 64)])
    saved = load_null(prior_dir)  # stage 1's own null context (CLIP's, or zeros)
    null = (task.encoder.null_context(1, device=device) if saved is None else saved.to(device))[0]
    prior = load_unet(prior_dir, device)
    prior_type = load_scheduler_config(prior_dir)["prediction_type"]
    abar = task.scheduler.alphas_cumprod

    def cond_eps(noisy, t, base, ctx):
        out = model_output(task.unet, noisy, t.to(device), ctx, baseline=base)
        return as_epsilon(out, noisy, t.to(device), abar, task.scheduler.config.prediction_type)

    def prior_eps(noisy, t, base, ctx):
        return as_epsilon(model_output(prior, noisy, t.to(device), ctx), noisy, t.to(device), abar,
                          prior_type)

    return measure(cond_eps, prior_eps, abar, z1, z2, context, null, seed=seed)
