"""Figure 3 right: example rows for confidently correct, unsure and confidently incorrect cases.

The paper (4.3) names three kinds of output: low error and low variance (confidently correct),
middling error and high variance (unsure), high error and low variance (confidently incorrect),
and shows one benign and one malignant case of each. It gives no thresholds; these are ours:

* correct means |L - mean p| < 0.5, i.e. mean p thresholded at 0.5 gives the true label;
* low variance means Var(p) at or below the median over the test nodules, high variance means
  in the top quartile;
* confidently correct: correct and low variance, the one with the lowest error;
* unsure: high variance, the one whose error is closest to 0.5;
* confidently incorrect: not correct and low variance, the one with the highest error.

`namd evaluate` (evaluation/variance.py) groups every nodule with the same decision rule and
the same top-quartile "unsure" cut; the examples here are the clearest members of its groups.

Each (category, label) gets at most one nodule and no nodule is shown twice; a combination
without a candidate is reported as missing rather than filled with a case that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from namd.evaluation.report.figures import LABEL_NAMES
from namd.evaluation.rows import row_label

CORRECT_BELOW = 0.5
LOW_VARIANCE_QUANTILE = 0.5
HIGH_VARIANCE_QUANTILE = 0.75
CATEGORIES = ("confidently correct", "unsure", "confidently incorrect")  # the paper's words
SHORT = {"confidently correct": "C", "unsure": "U", "confidently incorrect": "I"}
RULES = (f"Example rules (the paper gives no thresholds): correct means |L - mean p| < "
         f"{CORRECT_BELOW}; low variance means Var(p) at or below the "
         f"{LOW_VARIANCE_QUANTILE:.0%} quantile over the test nodules, high variance at or above "
         f"the {HIGH_VARIANCE_QUANTILE:.0%} quantile. Confidently correct: correct and low "
         "variance, lowest error. Unsure: high variance, error closest to 0.5. Confidently "
         "incorrect: not correct and low variance, highest error. One benign and one malignant "
         "nodule each where one qualifies.")


@dataclass(frozen=True)
class Example:
    """One example nodule: its category, true label, row in per_nodule.csv, error and variance."""

    category: str
    label: int
    row: int
    error: float
    variance: float

    @property
    def tag(self) -> str:
        """Short mark used on the scatter plot, e.g. 'C0' = confidently correct, benign."""
        return f"{SHORT[self.category]}{self.label}"


def select_examples(error: np.ndarray, variance: np.ndarray,
                    labels: np.ndarray) -> tuple[list[Example], list[str]]:
    """Pick the example nodules by the rules of the module docstring.

    Returns the examples (category order, benign first) and the combinations with no candidate.
    """
    low = np.quantile(variance, LOW_VARIANCE_QUANTILE)
    high = np.quantile(variance, HIGH_VARIANCE_QUANTILE)
    correct = error < CORRECT_BELOW
    used = np.zeros(len(error), bool)
    picked: list[Example] = []
    absent: list[str] = []
    for category in CATEGORIES:
        for lab in (0, 1):
            ok = (labels == lab) & ~used
            if category == "confidently correct":
                ok &= correct & (variance <= low)
                order = np.lexsort((variance, error))            # lowest error, then variance
            elif category == "unsure":
                ok &= variance >= high
                order = np.lexsort((-variance, np.abs(error - 0.5)))
            else:
                ok &= ~correct & (variance <= low)
                order = np.lexsort((variance, -error))           # highest error, then variance
            rows = [i for i in order if ok[i]]
            if not rows:
                absent.append(f"{category}, {LABEL_NAMES[lab]}")
                continue
            i = int(rows[0])
            used[i] = True
            picked.append(Example(category, lab, i, float(error[i]), float(variance[i])))
    return picked, absent


def load_samples(samples_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """RUN/samples/samples.npy (N, K, H, W) HU, memory-mapped, and its index.csv, checked."""
    samples_dir = Path(samples_dir)
    npy, csv = samples_dir / "samples.npy", samples_dir / "index.csv"
    for p in (npy, csv):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found")
    samples = np.load(npy, mmap_mode="r", allow_pickle=False)
    index = pd.read_csv(csv, dtype={"pair_id": str, "patient_id": str})
    if samples.ndim != 4:
        raise ValueError(f"{npy}: expected shape (nodules, K, H, W), got {samples.shape}")
    if len(index) != samples.shape[0]:
        raise ValueError(f"{csv}: {len(index)} rows but {npy} holds {samples.shape[0]} nodules")
    for col in ("pair_id", "baseline_index", "followup_index"):
        if col not in index.columns:
            raise ValueError(f"{csv}: column {col!r} missing")
    return samples, index


def non_finite_count(samples: np.ndarray, block: int = 64) -> int:
    """How many samples (N, K, H, W) hold a NaN or an infinity, read a block of nodules at a
    time (a memory-mapped file is never loaded whole)."""
    return int(sum((~np.isfinite(samples[s:s + block])).any(axis=(2, 3)).sum()
                   for s in range(0, len(samples), block)))


def example_arrays(pair_ids: list[str], samples: np.ndarray, index: pd.DataFrame, cohort,
                   where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline crops, real follow-ups (n, H, W) and samples (n, K, H, W) of the given pairs."""
    rows = {pid: i for i, pid in enumerate(index["pair_id"])}
    missing = [p for p in pair_ids if p not in rows]
    if missing:
        raise ValueError(f"{where}/index.csv has no row for pair {missing[0]!r} of per_nodule.csv")
    sel = [rows[p] for p in pair_ids]
    crops = {}
    for kind in ("baseline", "followup"):
        idx = pd.to_numeric(index[f"{kind}_index"]).to_numpy()[sel]
        if np.isnan(idx.astype(float)).any():
            raise ValueError(f"{where}/index.csv: pair {pair_ids[int(np.argmax(np.isnan(idx)))]!r} "
                             f"has no {kind} crop index")
        crops[kind] = cohort.images(idx.astype(np.int64))
    base, follow = crops["baseline"], crops["followup"]
    if base.shape[1:] != samples.shape[2:]:
        raise ValueError(f"{where}/samples.npy crops are {samples.shape[2:]}, the cohort's are "
                         f"{base.shape[1:]}")
    return base, follow, np.stack([np.asarray(samples[i], dtype=np.float32) for i in sel])


def examples_figure(examples: list[Example], baseline: np.ndarray, followup: np.ndarray,
                    samples: np.ndarray, window: tuple[float, float], variant: str) -> Figure:
    """Rows of baseline, real follow-up, mean of K, pixel variance and mean error maps.

    Crops are shown in the lung window; samples and follow-ups are clipped to that window before
    the maps (the networks only represent it). Variance and error maps share one colour scale per
    column, so rows can be compared.
    """
    if not examples:
        raise ValueError("no example nodules to show")
    lo, hi = window
    clipped = np.clip(samples, lo, hi)
    target = np.clip(followup, lo, hi)[:, None]
    var_maps, err_maps = clipped.var(1), np.abs(clipped - target).mean(1)
    vmax_var = float(np.percentile(var_maps, 99.5)) or 1.0
    vmax_err = float(np.percentile(err_maps, 99.5)) or 1.0
    k = samples.shape[1]
    titles = ("baseline (real)", "follow-up (real)", f"mean of K = {k} samples",
              "pixel variance over K (HU²)", "mean |sample - follow-up| (HU)")
    fig = Figure(figsize=(12.5, 2.35 * len(examples) + 1.3), layout="constrained")
    axes = fig.subplots(len(examples), 5, squeeze=False)
    ims = []
    for r, ex in enumerate(examples):
        panels = ((baseline[r], "gray", lo, hi), (followup[r], "gray", lo, hi),
                  (clipped[r].mean(0), "gray", lo, hi), (var_maps[r], "magma", 0, vmax_var),
                  (err_maps[r], "inferno", 0, vmax_err))
        for c, (img, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[r, c]
            ims.append(ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r, 0].set_ylabel(f"{ex.category}\n{LABEL_NAMES[ex.label]}\n"
                              f"error {ex.error:.2f}, Var {ex.variance:.2g}", fontsize=9)
    fig.colorbar(ims[0], ax=axes[:, :3].ravel().tolist(), location="bottom", shrink=0.6,
                 label=f"HU (lung window [{lo:g}, {hi:g}])")
    for col, label in ((3, "HU²"), (4, "HU")):
        bar = fig.colorbar(ims[col], ax=axes[:, col].tolist(), location="bottom", label=label,
                           format="%.3g")
        bar.locator = MaxNLocator(3)  # few ticks: the labels of large variances stay apart
        bar.update_ticks()
    fig.suptitle(f"{row_label(variant)}: examples by confidence", fontsize=12)
    return fig
