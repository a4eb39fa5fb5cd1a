"""Analysis figures of the report (paper Figure 2, Figure 3 left, Figure 5, ROC/PR curves).

Inputs are the files `namd evaluate` writes (RUN/eval/per_nodule.csv: one row per test nodule
with the evaluator's probability per row of the table, and per sample run `p_<variant>_k<i>` for
the generated variants) and the trained VAEs. Figures are drawn with matplotlib's object API
(`matplotlib.figure.Figure`, PNGs rendered by the Agg canvas), so no global pyplot state and no
display is needed. The example rows of Figure 3 live in `figures_examples.py`.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from namd.config.methods import REFERENCE
from namd.evaluation import variance
from namd.evaluation.rows import generated, row_label, rows
from namd.models.device import resolve_device

LABEL_COLOURS = {0: "tab:blue", 1: "tab:red"}
LABEL_NAMES = {0: "benign (L=0)", 1: "malignant (L=1)"}
_SAMPLE_COLUMN = re.compile(r"^p_(?P<variant>.+)_k(?P<k>\d+)$")
DPI = 110


def row_colour(name: str) -> str:
    """A fixed colour per table row, so a row looks the same in every figure."""
    keys = list(rows())
    return f"C{keys.index(name) % 10}" if name in keys else "0.4"


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# ---------------------------------------------------------------- per-nodule probabilities

def load_per_nodule(path: Path) -> pd.DataFrame:
    """RUN/eval/per_nodule.csv, checked: pair_id and label present, labels 0/1, p in [0, 1]."""
    path = Path(path)
    df = pd.read_csv(path, dtype={"pair_id": str})
    for col in ("pair_id", "label"):
        if col not in df.columns:
            raise ValueError(f"{path}: column {col!r} missing")
    bad = df[~df["label"].isin([0, 1])]
    if len(bad):
        raise ValueError(f"{path}: row {int(bad.index[0]) + 2}: label must be 0 or 1, "
                         f"got {bad['label'].iloc[0]!r}")
    for col in [c for c in df.columns if c.startswith("p_")]:
        values = pd.to_numeric(df[col], errors="coerce")
        wrong = values.notna() & ((values < 0) | (values > 1)) | (values.isna() & df[col].notna())
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise ValueError(f"{path}: row {row + 2}, column {col}: probability must be in [0, 1], "
                             f"got {df[col].iloc[row]!r}")
        df[col] = values
    df["label"] = df["label"].astype(int)
    return df


def generated_variants(df: pd.DataFrame) -> dict[str, list[str]]:
    """Generated variants present in the table -> their sample columns ordered by k."""
    found: dict[str, list[tuple[int, str]]] = {}
    for col in df.columns:
        m = _SAMPLE_COLUMN.match(col)
        if m:
            found.setdefault(m["variant"], []).append((int(m["k"]), col))
    order = [v for v in generated() if v in found] + sorted(v for v in found if v not in generated())
    return {v: [c for _, c in sorted(found[v])] for v in order}


def sample_matrix(df: pd.DataFrame, variant: str) -> np.ndarray:
    """(N, K) evaluator probabilities of one generated variant, one column per sample run."""
    cols = generated_variants(df).get(variant)
    if not cols:
        raise ValueError(f"per_nodule.csv has no p_{variant}_k* columns")
    return df[cols].to_numpy(dtype=float)


def row_scores(df: pd.DataFrame, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per-nodule score of each table row: p_<row>, or for generated rows the mean over K."""
    variants = generated_variants(df)
    candidates = names if names is not None else (
        [n for n in rows() if f"p_{n}" in df.columns or n in variants]
        + [c[2:] for c in df.columns if c.startswith("p_") and not _SAMPLE_COLUMN.match(c)
           and c[2:] not in rows()]
        + [v for v in variants if v not in rows()])
    out: dict[str, np.ndarray] = {}
    for name in candidates:
        if f"p_{name}" in df.columns:
            out[name] = df[f"p_{name}"].to_numpy(dtype=float)
        elif name in variants:
            p = df[variants[name]].to_numpy(dtype=float)
            with warnings.catch_warnings():  # all-NaN rows stay NaN (no score), quietly
                warnings.simplefilter("ignore", RuntimeWarning)
                out[name] = np.nanmean(p, 1)
    return out


def error_and_variance(p: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paper 4.3: prediction error |L - mean_k p| and predictive variance Var_k(p) per nodule,
    computed by `namd evaluate`'s own code (population variance over the K runs)."""
    table = variance.per_nodule(p, labels)
    return table["error"].to_numpy(), table["variance"].to_numpy()


# ---------------------------------------------------------------- ROC and PR

def roc_pr_figure(labels: np.ndarray, scores: dict[str, np.ndarray]) -> tuple[Figure, dict]:
    """ROC and precision-recall curves of the table's rows; also returns the areas drawn.

    Generated rows use the mean probability over the K sample runs (the table's mean +- std
    is over runs instead). Nodules without a score for a row (NaN) are left out of that curve.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    fig = Figure(figsize=(12, 6.6), layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    areas: dict[str, dict] = {}
    for name, s in scores.items():
        ok = np.isfinite(s)
        y, s = labels[ok], s[ok]
        if len(np.unique(y)) < 2:
            areas[name] = {"skipped": "needs both labels among scored nodules"}
            continue
        auroc, auprc = roc_auc_score(y, s), average_precision_score(y, s)
        areas[name] = {"auroc": float(auroc), "auprc": float(auprc), "n": int(ok.sum())}
        style = {"color": row_colour(name), "lw": 2.4 if name == REFERENCE else 1.4,
                 "ls": "--" if name in ("brock", "ehr_logistic", "baseline_plus_ehr") else "-",
                 "zorder": 3 if name == REFERENCE else 2}
        fpr, tpr, _ = roc_curve(y, s)
        ax_roc.plot(fpr, tpr, label=f"{row_label(name)}: AUROC {auroc:.3f}, AP {auprc:.3f}",
                    **style)
        prec, rec, _ = precision_recall_curve(y, s)
        ax_pr.step(rec, prec, where="post", **style)
    ax_roc.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="chance (ROC)")
    prevalence = float(np.mean(labels)) if len(labels) else 0.0
    ax_pr.axhline(prevalence, color="0.6", lw=1, ls="-.")
    ax_roc.plot([], [], color="0.6", lw=1, ls="-.",
                label=f"prevalence {prevalence:.3f} (PR chance)")
    ax_roc.set(xlabel="false positive rate (1 - specificity)",
               ylabel="true positive rate (sensitivity)", title="ROC curves",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)",
              title="Precision-recall curves", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.set_aspect("equal")
    fig.legend(*ax_roc.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9,
               title="rows of the table (generated rows: each nodule's mean p over the K samples)")
    return fig, areas


# ---------------------------------------------------------------- Figure 3 (left) and Figure 5

def error_variance_figure(p: np.ndarray, labels: np.ndarray, variant: str,
                          marks: list[tuple[int, str]] | None = None) -> Figure:
    """Figure 3 left: error vs predictive variance (coloured by label) and variance by label.

    `marks` are (row, short tag) of the example nodules drawn in the examples figure.
    """
    err, var = error_and_variance(p, labels)
    fig = Figure(figsize=(12, 4.8))
    ax_sc, ax_box = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    for lab in (0, 1):
        m = labels == lab
        ax_sc.scatter(var[m], err[m], s=16, alpha=0.65, color=LABEL_COLOURS[lab],
                      label=f"{LABEL_NAMES[lab]} (n={int(m.sum())})", edgecolor="none")
    for i, (row, tag) in enumerate(marks or []):
        ax_sc.scatter([var[row]], [err[row]], s=130, facecolor="none", edgecolor="black", lw=1.3)
        ax_sc.annotate(tag, (var[row], err[row]), xytext=(7, 5 if i % 2 == 0 else -13),
                       textcoords="offset points", fontsize=9)  # alternate: ties stay legible
    ax_sc.axhline(0.5, color="0.5", ls=":", lw=1, label="|L - mean p| = 0.5 (decision at p = 0.5)")
    ax_sc.set(xlabel="predictive variance Var(p) over K samples",
              ylabel="prediction error |L - mean p|", ylim=(-0.02, 1.02),
              title=f"{row_label(variant)}: error vs variance (K = {p.shape[1]})")
    ax_sc.legend(fontsize=8, loc="best")
    ax_sc.grid(alpha=0.3)
    data = [var[labels == lab] for lab in (0, 1)]
    present = [i for i, d in enumerate(data) if len(d)]
    ax_box.boxplot([data[i] for i in present], positions=present, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # jitter only, for visibility
    for i in present:
        ax_box.scatter(i + rng.uniform(-0.15, 0.15, len(data[i])), data[i], s=10, alpha=0.5,
                       color=LABEL_COLOURS[i], edgecolor="none")
    ax_box.set_xticks([0, 1], [LABEL_NAMES[0], LABEL_NAMES[1]])
    ax_box.set(xlim=(-0.6, 1.6), xlabel="true label", ylabel="predictive variance Var(p)",
               title="Predictive variance by true label")
    ax_box.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def running_variance_figure(curves: dict[str, np.ndarray], k_used: int | None = None,
                            max_curves: int = 50, seed: int = 0) -> Figure:
    """Figure 5: running variance of p against K, faint per-nodule curves plus the mean.

    Like the paper, at most `max_curves` randomly chosen nodules are drawn; the mean is over all.
    """
    n = len(curves)
    fig = Figure(figsize=(max(6.0, 5.2 * n), 4.4))
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    rng = np.random.default_rng(seed)
    for ax, (variant, rv) in zip(axes, curves.items(), strict=True):
        k = np.arange(1, rv.shape[1] + 1)
        pick = rng.choice(len(rv), size=min(max_curves, len(rv)), replace=False)
        for i in pick:
            ax.plot(k, rv[i], color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(k, rv.mean(0), color="black", lw=2.4, label=f"mean over all {len(rv)} nodules")
        faint = f"{len(pick)} random nodules" if len(pick) < len(rv) else "each nodule"
        ax.plot([], [], color="tab:blue", alpha=0.5, lw=0.8, label=faint)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if k_used:
            ax.axvline(k_used, color="0.4", ls=":", lw=1, label=f"K used = {k_used}")
        ax.set(xlabel="number of samples K", ylabel="running variance of evaluator p",
               title=f"{row_label(variant)}", xlim=(1, max(2, rv.shape[1])))
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- Figure 2

def encode_crops(vae_dir: Path, hu: np.ndarray, window: tuple[float, float],
                 batch: int = 64) -> np.ndarray:
    """Flattened posterior-mean latents (n, C*h*w) of HU crops under a trained VAE stage."""

    from namd.models.vae import encode, load_trained_vae, to_network
    from namd.run.provenance import progress

    device = resolve_device(None)
    vae, _ = load_trained_vae(vae_dir, device)
    out = []
    batches = range(0, len(hu), batch)
    for start in progress(batches, desc=f"encode {Path(vae_dir).name}", unit="batch"):
        x = to_network(hu[start:start + batch], window, vae.config.in_channels).to(device)
        out.append(encode(vae, x).flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def tsne_embed(latents: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of latents (sklearn; PCA init, perplexity 30 or less for small sets)."""
    from sklearn.manifold import TSNE

    n = len(latents)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 test crops, got {n}")
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca",
                random_state=seed).fit_transform(latents.astype(np.float64))


def diameter_neighbour_ratio(embedding: np.ndarray, diameter: np.ndarray, k: int = 5) -> float:
    """How smoothly diameter varies over a map: mean |d_i - d_j| over each point's k nearest
    map neighbours divided by the same over all pairs (1 = no structure, lower = smoother)."""
    from sklearn.neighbors import NearestNeighbors

    ok = np.isfinite(diameter)
    emb, d = embedding[ok], diameter[ok]
    if len(d) <= k + 1:
        return float("nan")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)
    local = np.abs(d[:, None] - d[idx[:, 1:]]).mean()
    overall = np.abs(d[:, None] - d[None, :]).sum() / (len(d) * (len(d) - 1))
    return float(local / overall) if overall > 0 else float("nan")


def tsne_figure(panels: list[tuple[str, np.ndarray]], diameter: np.ndarray,
                note: str | None = None) -> Figure:
    """Figure 2: t-SNE maps (one per VAE) of the same test crops, coloured by long-axis diameter."""
    fig = Figure(figsize=(6.2 * len(panels) + 1.2, 5.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    ok = np.isfinite(diameter)
    vmin, vmax = (np.nanmin(diameter), np.nanmax(diameter)) if ok.any() else (0.0, 1.0)
    sc, size = None, float(np.clip(6000 / max(len(diameter), 1), 8, 40))  # fewer points: bigger
    for ax, (title, emb) in zip(axes, panels, strict=True):
        sc = ax.scatter(emb[ok, 0], emb[ok, 1], c=diameter[ok], cmap="viridis", vmin=vmin,
                        vmax=vmax, s=size, alpha=0.85, edgecolor="none")
        if (~ok).any():
            ax.scatter(emb[~ok, 0], emb[~ok, 1], marker="x", color="0.5", s=size,
                       label=f"diameter missing (n={int((~ok).sum())})")
            ax.legend(fontsize=8, loc="best")
        ratio = diameter_neighbour_ratio(emb, diameter)
        ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2",
               title=f"{title}\nneighbour diameter ratio {ratio:.2f} (1 = no structure)")
        ax.grid(alpha=0.2)
    fig.colorbar(sc, ax=list(axes), label="long-axis diameter SCT_LONG_DIA (mm)", shrink=0.9)
    if note:
        fig.text(0.01, -0.02, note, fontsize=9, ha="left", va="top", wrap=True)
    return fig
