"""`namd sample`'s outputs: the sample folder of a method (RUN/samples, RUN/samples_<method>).

    samples.npy    float32 HU, shape (N_nodules, K, H, W): sample k of nodule i at [i, k]
    index.csv      row i describes nodule i: pair_id, patient_id, split, label,
                   baseline_index, followup_index (crop indices into RUN/cohort)
    grids/*.png    for a handful of nodules: baseline, real follow-up (when known), the mean
                   and pixel-wise variance of the K samples, then the K samples
    run_info.json  resolved config, seed, versions, timing (written last: the stage is done)
The evaluation reads exactly these files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from namd.cohort.store import Cohort
from namd.config import NamdConfig, SamplingConfig, methods
from namd.config.methods import Method
from namd.inference.sampler import Sampler, pairs_to_sample
from namd.run.contract import RunFileError, command_for
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, atomic_dir, progress

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.npy"
INDEX_FILE = "index.csv"
GRID_DIR = "grids"
INDEX_COLUMNS = ("pair_id", "patient_id", "split", "label", "baseline_index", "followup_index")
ORDER_KEY = "pair_order_sha256"  # run_info.json: index.csv's row order, checked by its readers
FINITE_BLOCK = 64  # nodules checked for non-finite samples at a time (bounded memory)


def index_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    """The index.csv table for the sampled pairs (row i = nodule i of samples.npy)."""
    out = pairs.loc[:, list(INDEX_COLUMNS)].copy()
    out["label"] = out["label"].astype("Int64")
    out["followup_index"] = out["followup_index"].astype("Int64")
    return out.reset_index(drop=True)


def grid_rows(index: pd.DataFrame, n: int) -> list[int]:
    """Up to n nodules to draw, malignant and benign alternately, in index order."""
    by_label = [list(index.index[index["label"] == v]) for v in (1, 0)]
    rest = list(index.index[index["label"].isna()])
    picked: list[int] = []
    while len(picked) < n and any(by_label + [rest]):
        for group in (*by_label, rest):
            if group and len(picked) < n:
                picked.append(int(group.pop(0)))
    return sorted(picked)


def save_grid(path: Path, baseline: np.ndarray, followup: np.ndarray | None, samples: np.ndarray,
              window: tuple[float, float], title: str) -> None:
    """One PNG: baseline, real follow-up, mean, variance, then the K samples (lung window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(samples)
    cols = max(4, min(k, 10))
    rows = 1 + math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = {"baseline": baseline, "follow-up": followup, f"mean of {k}": samples.mean(0)}
    for ax, (name, img) in zip(axes[0], shown.items(), strict=False):
        if img is None:
            ax.set_title("follow-up unknown", fontsize=7)
            continue
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1])
        ax.set_title(name, fontsize=7)
    var = axes[0][3].imshow(samples.var(0), cmap="magma")
    axes[0][3].set_title("variance (HU^2)", fontsize=7)
    fig.colorbar(var, ax=axes[0][3], fraction=0.046, pad=0.04).ax.tick_params(labelsize=5)
    for j in range(k):
        ax = axes[1 + j // cols][j % cols]
        ax.imshow(samples[j], cmap="gray", vmin=window[0], vmax=window[1])
        ax.set_title(f"sample {j + 1}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _decode_into(sampler: Sampler, latents: torch.Tensor, target: np.ndarray, batch: int) -> None:
    """Decode (N, K, C, h, w) latents chunk by chunk into the (N, K, H, W) array `target`."""
    n, k = latents.shape[:2]
    flat = latents.reshape(n * k, *latents.shape[2:])
    view = target.reshape(n * k, *target.shape[2:])
    for s in progress(range(0, n * k, batch), desc="decode", unit="batch"):
        view[s:s + batch] = sampler.decode(flat[s:s + batch], batch)


def run_sample_stage(config: NamdConfig, run: RunDir, method: Method, *, overwrite: bool = False,
                     device: str | torch.device = "cpu") -> Path:
    """Draw config.sampling.k follow-ups for every pair of config.sampling.split with the
    trained model of `method` (its table entry's sampler: NAMD's VAE and conditional U-Net, or
    a compared method's own) and write its sample folder; returns it."""
    cfg, dirs = methods.sampling_of(config, method), method.uses
    cohort, pairs = open_sample_stage(run, method, cfg.split, overwrite)
    sampler = method.load_sampler(run, config, device)
    start = time.perf_counter()
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(row) for _, row in pairs.iterrows()], cfg.aux_batch)
    latents = sampler.generate(cond, cfg)
    return write_sample_stage(
        config, run, method, cohort, pairs, cfg.k,
        lambda arr: _decode_into(sampler, latents, arr, cfg.aux_batch), start,
        cond_dir=dirs["cond"], vae_dir=dirs.get("vae"),
        seed_rule="sample k of nodule i: seed = sha256(f'{seed}:{pair_id}:{k}')[:8]",
        device=str(device), **sampler_info(sampler, cfg))


def sampler_info(sampler: Sampler, cfg: SamplingConfig) -> dict[str, object]:
    """How the follow-ups were drawn: the steps, and a compared method's own sampler (its
    `info()`) or NAMD's scheduler and eta."""
    own = getattr(sampler, "info", None)
    return {"steps": cfg.steps, **(own() if callable(own) else {"sampler": cfg.scheduler,
                                                                  "eta": cfg.eta})}


def open_sample_stage(run: RunDir, method: Method, split: str,
                      overwrite: bool) -> tuple[Cohort, pd.DataFrame]:
    """The cohort and the pairs of `split` a method samples, refusing to replace a sample
    folder without `overwrite`."""
    out = run.stage(method.samples)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to sample again)")
    cohort = Cohort(run.require("cohort", "sample"))
    return cohort, pairs_to_sample(cohort, split)


def write_sample_stage(config: NamdConfig, run: RunDir, method: Method, cohort: Cohort,
                       pairs: pd.DataFrame, k: int, fill: Callable[[np.ndarray], None],
                       start: float, **info: object) -> Path:
    """Write a method's sample folder atomically: samples.npy of shape (N, k, H, W), which
    `fill` writes in place (HU), index.csv, the PNG grids and run_info.json (with `info`);
    every method's sample function ends here, so every row is read the same way."""
    out, index, size = run.stage(method.samples), index_frame(pairs), cohort.crop_size
    with atomic_dir(out, overwrite=True) as tmp:
        arr = np.lib.format.open_memmap(tmp / SAMPLES_FILE, mode="w+", dtype=np.float32,
                                        shape=(len(pairs), k, size, size))
        fill(arr)
        arr.flush()
        seconds = time.perf_counter() - start
        check_finite_samples(arr, index, out, run, info)
        index.to_csv(tmp / INDEX_FILE, index=False)
        _write_grids(tmp / GRID_DIR, cohort, index, arr, config, config.sampling.grids)
        del arr
    crops = len(pairs) * k
    log.info("%d virtual follow-ups of %d nodules in %.1f s (%.1f crops/s)", crops, len(pairs),
             seconds, crops / seconds)
    run.mark_done(method.samples, config, config.sampling.seed, method=method.name,
                  n_nodules=len(pairs), k=k, shape=[len(pairs), k, size, size],
                  seconds=seconds, crops_per_second=crops / seconds,
                  pair_order_sha256=pair_order_digest(index["pair_id"]), **info)
    return out


def pair_order_digest(pair_ids: Iterable[object]) -> str:
    """sha256 of the pair ids in row order: run_info.json records it, so an index.csv whose rows
    were reordered (each row then describes another nodule's samples) is refused on read."""
    return hashlib.sha256("\n".join(str(p) for p in pair_ids).encode()).hexdigest()


def check_pair_order(index_path: Path, pair_ids: Iterable[object], info: dict) -> None:
    """RunFileError when index.csv's rows are not in the order `namd sample` wrote them with
    samples.npy (its run_info.json's pair_order_sha256); a folder from a namd that kept no
    digest is not checked."""
    expected = info.get(ORDER_KEY)
    if expected is None:
        return
    if pair_order_digest(pair_ids) != expected:
        raise RunFileError(index_path, "its rows are not in the order samples.npy was written in "
                           f"({ORDER_KEY} of {RUN_INFO} differs): each row would describe another "
                           "nodule's samples", writer="samples")


def check_finite_samples(samples: np.ndarray, index: pd.DataFrame, out: Path, run: RunDir,
                         info: dict) -> None:
    """RunFileError naming the sample folder and the weights that made the samples when any
    decoded sample is NaN or infinite (checked a nodule block at a time, before anything is
    published), so a damaged or diverged model never writes samples that look finished."""
    bad = 0
    first: tuple[int, int] | None = None
    for s in range(0, len(samples), FINITE_BLOCK):
        ok = np.isfinite(samples[s:s + FINITE_BLOCK]).all(axis=(2, 3))
        bad += int((~ok).sum())
        if first is None and not ok.all():
            i, k = np.argwhere(~ok)[0]
            first = (s + int(i), int(k))
    if first is None:
        return
    folders = [str(info[key]) for key in ("cond_dir", "vae_dir") if info.get(key)]
    made_by = " and ".join(str(run.stage(f)) for f in folders) or "the method's model folders"
    raise RunFileError(out, f"{bad} of {samples.shape[0] * samples.shape[1]} decoded samples hold "
                       f"NaN or inf (first: pair {index['pair_id'].iloc[first[0]]}, sample "
                       f"{first[1] + 1}); nothing was written",
                       f"the weights in {made_by} are damaged or diverged: retrain the damaged "
                       f"one{_retrain_hint(run, folders[:1])}, then sample again")


def _retrain_hint(run: RunDir, folders: list[str]) -> str:
    """' (e.g. `namd train cond --run RUN --overwrite`)' for the first trained folder, or ''."""
    found = methods.owner(folders[0]) if folders else None
    if found is None or found[1] is None:
        return ""
    return f" (e.g. `{command_for(run.path, folders[0])} --overwrite`)"


def _write_grids(folder: Path, cohort: Cohort, index: pd.DataFrame, samples: np.ndarray,
                 config: NamdConfig, n: int) -> None:
    """PNG grids for up to n nodules."""
    window = tuple(config.data.window_hu)
    for i in grid_rows(index, n):
        row = index.iloc[i]
        follow = None if pd.isna(row["followup_index"]) else cohort.images([int(row["followup_index"])])[0]
        label = "unknown" if pd.isna(row["label"]) else ("malignant" if int(row["label"]) else "benign")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row["pair_id"]))
        save_grid(folder / f"{i:04d}_{safe}.png", cohort.images([int(row["baseline_index"])])[0],
                  follow, np.asarray(samples[i]), window,
                  f"pair {row['pair_id']} ({label}), {len(samples[i])} virtual follow-ups")
