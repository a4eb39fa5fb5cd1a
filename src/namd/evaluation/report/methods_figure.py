"""Figure 3, extended: every method's follow-ups for the same test nodules, side by side.

The paper's Figure 3 shows a baseline, its real follow-up and generated follow-ups; this figure
puts one row per nodule and one column per method of the table that was sampled in the run
(namd.config.methods), so the methods are compared on the same nodules: sample 1 of a
stochastic method (its first seed, the same seed rule for every method), the one follow-up of a
deterministic one, and the mean of the K samples where a method drew more than one.

Which nodules (the paper gives no rule; ours): among the test pairs every shown method sampled,
for each label the nodules whose real follow-up changed most, at the upper quartile and at the
median of the mean absolute change inside the central disc (radius a quarter of the crop), so
the figure shows growth a method should follow and nodules that barely change. A nodule appears
once (a quantile already taken moves to the next smaller change).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from namd.config import methods
from namd.evaluation.report.figures import LABEL_NAMES

QUANTILES = (1.0, 0.75, 0.5)  # of the real change, per label: largest, upper quartile, median


def central_change(baseline: np.ndarray, followup: np.ndarray) -> np.ndarray:
    """Mean |follow-up - baseline| (HU) inside the central disc of each (n, H, W) pair."""
    size = baseline.shape[-1]
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disc = xx ** 2 + yy ** 2 <= (size / 4) ** 2
    return np.abs(followup - baseline)[:, disc].mean(1)


def pick_pairs(change: np.ndarray, labels: np.ndarray) -> list[int]:
    """Row indices of the nodules to show: per label (malignant first) the ones at QUANTILES of
    the real change, each nodule once."""
    picked: list[int] = []
    for label in (1, 0):
        rows = np.flatnonzero(labels == label)
        if not len(rows):
            continue
        order = [int(i) for i in rows[np.argsort(change[rows], kind="stable")]]
        for q in QUANTILES:
            at = round(q * (len(order) - 1))  # the quantile, else the next smaller change unused
            free = [i for i in order[:at + 1][::-1] if i not in picked]
            if free:
                picked.append(free[0])
    return picked


def short_label(name: str) -> str:
    """A method's column title: its label without the long qualifiers, wrapped to the column."""
    label = methods.get(name).label.split(" (generated")[0].replace(", fine-tuned", "")
    return textwrap.fill(label, 18)


def methods_figure(baseline: np.ndarray, followup: np.ndarray, shown: dict[str, np.ndarray],
                   labels: np.ndarray, pair_ids: list[str], window: tuple[float, float]) -> Figure:
    """Rows of nodules: baseline, real follow-up, then each method's follow-up (`shown`: method
    -> (n, K, H, W) HU samples of the same nodules), in the lung window."""
    lo, hi = window
    cols = 2 + len(shown)
    fig = Figure(figsize=(1.45 * cols + 0.6, 1.55 * len(baseline) + 0.8), layout="constrained")
    axes = fig.subplots(len(baseline), cols, squeeze=False)
    titles = ["baseline", "real follow-up", *(
        f"{short_label(n)}\n{'its one follow-up' if s.shape[1] == 1 else 'sample 1'}"
        for n, s in shown.items())]
    for r in range(len(baseline)):
        panels = [baseline[r], followup[r], *(s[r, 0] for s in shown.values())]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
        axes[r, 0].set_ylabel(f"{pair_ids[r]}\n{LABEL_NAMES[int(labels[r])]}", fontsize=7)
    fig.suptitle("Every method's follow-up for the same test nodules (lung window "
                 f"[{lo:g}, {hi:g}] HU)", fontsize=10)
    return fig


def common_pairs(indexes: dict[str, pd.DataFrame]) -> list[str]:
    """The pair ids every sample folder holds, in the first folder's order."""
    first, *rest = indexes.values()
    keep = set(first["pair_id"])
    for index in rest:
        keep &= set(index["pair_id"])
    return [p for p in first["pair_id"] if p in keep]
