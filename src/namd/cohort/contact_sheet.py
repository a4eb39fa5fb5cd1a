"""A contact sheet of a cohort: baseline / follow-up pairs by nodule type, margin and label,
in a lung window, so a person can judge at a glance whether the crops look plausible."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from namd.cohort.ehr import ATTENUATION, MARGINS
from namd.cohort.store import Cohort
from namd.run.provenance import atomic_write_bytes

PAIRS_PER_ROW = 3
UNPAIRED_SHOWN = 6


def pick_examples(cohort: Cohort) -> list[dict]:
    """One pair per (type, margin, label) found in the cohort, in a fixed order (pairs with
    both diameters recorded first)."""
    pairs = cohort.pairs()
    complete = pairs[["SCT_LONG_DIA", "followup_SCT_LONG_DIA"]].notna().all(axis=1)
    pairs = pairs.assign(_complete=complete).sort_values("_complete", ascending=False, kind="stable")
    chosen = []
    for att in (1, 2, 3):
        for margin in (2, 3, 1):
            for label in (0, 1):
                rows = pairs[(pairs["SCT_PRE_ATT"] == att) & (pairs["SCT_MARGINS"] == margin)
                             & (pairs["label"] == label)]
                if len(rows):
                    chosen.append(rows.iloc[0].to_dict())
    return chosen


def _caption(row: dict) -> tuple[str, str]:
    """Titles for the baseline and follow-up panels of one pair."""
    label = {0: "benign", 1: "malignant"}.get(row["label"], "label ?")
    kind = f"{ATTENUATION[int(row['SCT_PRE_ATT'])]}, {MARGINS[int(row['SCT_MARGINS'])]}"

    def mm(value) -> str:
        return "?" if value != value else f"{value:.0f}"  # NaN-safe

    return (f"{kind}\n{label}, baseline {mm(row['SCT_LONG_DIA'])} mm",
            f"{row['patient_id']}\nfollow-up {mm(row['followup_SCT_LONG_DIA'])} mm")


def _panels(cohort: Cohort) -> list[tuple[np.ndarray, str]]:
    """(crop, caption) of every panel: pairs side by side, then a row of unpaired crops."""
    panels: list[tuple[np.ndarray, str]] = []
    for row in pick_examples(cohort):
        imgs = cohort.images([row["baseline_index"], row["followup_index"]])
        panels += list(zip(imgs, _caption(row), strict=True))
    while len(panels) % (2 * PAIRS_PER_ROW):
        panels.append((None, ""))
    unpaired = cohort.crops(kinds=("unpaired",)).head(UNPAIRED_SHOWN)
    if len(unpaired):
        imgs = cohort.images(unpaired["crop_index"].to_numpy())
        for img, (_, row) in zip(imgs, unpaired.iterrows(), strict=True):
            label = {0: "benign", 1: "malignant"}.get(row["label"], "no label")
            panels.append((img, f"unpaired {row['patient_id']}\n{label}"))
    return panels


def write_contact_sheet(cohort: Cohort | str | Path, path: str | Path,
                        window: tuple[float, float] = (-1000.0, 400.0)) -> Path:
    """Write a PNG of example pairs (and a row of unpaired crops) shown in `window` (HU).

    The crops are tiled into one mosaic (fast to draw), captions are text above each tile.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cohort = cohort if isinstance(cohort, Cohort) else Cohort(cohort)
    panels = _panels(cohort)
    cols, size = 2 * PAIRS_PER_ROW, cohort.crop_size
    rows = max(1, -(-len(panels) // cols))
    gap, head = size // 10, size // 3  # pixels between tiles and above them for captions
    cell_w, cell_h = size + gap, size + head
    mosaic = np.ones((rows * cell_h, cols * cell_w), np.float32)
    lo, hi = window
    for i, (img, _) in enumerate(panels):
        if img is not None:
            r, c = divmod(i, cols)
            y, x = r * cell_h + head, c * cell_w + gap // 2
            mosaic[y:y + size, x:x + size] = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    scale = 2.2 / size  # inches per crop
    fig = Figure(figsize=(mosaic.shape[1] * scale * 1.0, mosaic.shape[0] * scale + 0.4))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, mosaic.shape[0] * scale / (mosaic.shape[0] * scale + 0.4)))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    for i, (_, caption) in enumerate(panels):
        r, c = divmod(i, cols)
        ax.text(c * cell_w + gap // 2 + size / 2, r * cell_h + head - 2, caption, fontsize=7,
                ha="center", va="bottom")
    fig.text(0.5, 0.995, f"{cohort.path.name}: baseline | follow-up, window [{lo:g}, {hi:g}] HU, "
             f"{cohort.meta['pixel_spacing_mm']} mm/px", ha="center", va="top", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
