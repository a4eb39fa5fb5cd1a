"""The model card of an exported model folder (README.md + curves/*.png): what the run was
trained on, how it scored, how each stage trained, and what the model is not for.

Everything comes from the run's own records: RUN/cohort (counts per split), RUN/eval/metrics.json
(Table 1 with its intervals; "not evaluated" without it) and each stage's log.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from namd.cohort.store import Cohort
from namd.evaluation.freshness import read_current_metrics
from namd.evaluation.schema import TABLE_FIELDS
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_text

CURVES_DIR = "curves"
LIMITS = ("Research use only: not a medical device, not validated for clinical decisions.",
          "Trained on the run's cohort only; a synthetic cohort says nothing about real patients.",
          "Small training budgets (CPU presets) give models far from the paper's; check Table 1.",
          "Virtual follow-ups are samples of a generative model, not predictions of the real scan.",
          "The Lung-RADS readout measures one 2D crop per image, not the nodule's volume or other "
          "slices; its categories are not a radiologist's.")


def cohort_section(run: RunDir) -> str:
    """Crops, patients and pairs per split of RUN/cohort (with its source), or why not."""
    if not (run.stage("cohort") / "cohort.json").is_file():
        return "No cohort folder in the run: training data unknown.\n"
    cohort = Cohort(run.stage("cohort"))
    m = cohort.manifest
    lines = [f"Source: {cohort.meta.get('source', 'unknown')}; crops {cohort.crop_size} px at "
             f"{cohort.meta.get('pixel_spacing_mm', '?')} mm, units {cohort.meta.get('units', '?')}.", "",
             "| split | patients | pairs | malignant pairs |", "|---|---|---|---|"]
    for split, part in m.groupby("split", sort=True):
        base = part[part["kind"] == "baseline"]
        lines.append(f"| {split} | {part['patient_id'].nunique()} | {len(base)} | "
                     f"{int((base['label'] == 1).sum())} |")
    return "\n".join(lines) + "\n"


def metrics_section(run: RunDir) -> str:
    """Table 1 of RUN/eval/metrics.json (mean ± std [CI] per row), or 'not evaluated'; metrics
    that lack what the table states, hold a non-finite number or are older than a stage they
    describe are refused in one line (a card never states numbers of other weights)."""
    path = run.stage("eval") / "metrics.json"
    if not path.is_file():
        return "Not evaluated (no eval/metrics.json in the run).\n"
    from namd.evaluation.report.html import fmt_stat
    from namd.evaluation.table_text import k_differs, k_note

    metrics = read_current_metrics(run, TABLE_FIELDS)
    differs = k_differs(metrics)
    level = (metrics.get("bootstrap") or {}).get("level", 0.95)
    lines = [f"Split {metrics.get('split', 'test')}: {metrics.get('n_test')} nodules, "
             f"{metrics.get('n_malignant')} malignant; [{level:.0%} CI] bootstrap over nodules.", "",
             "| row | AUROC | AUPRC |", "|---|---|---|"]
    for row in metrics.get("rows", []):
        if row.get("status", "ok") != "ok":
            lines.append(f"| {row.get('name')} | {row.get('status')} | |")
        else:
            mark = f" (K = {differs[row['name']]} *)" if row.get("name") in differs else ""
            lines.append(f"| {row.get('name')}{mark} | {fmt_stat(row.get('auroc'))} | "
                         f"{fmt_stat(row.get('auprc'))} |")
    note = k_note(metrics)
    return "\n".join(lines + (["", note] if note else [])) + "\n"


def plot_curve(log_csv: Path, out: Path, title: str) -> bool:
    """Train and validation loss against step from a stage's log.csv; False when it has none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = pd.read_csv(log_csv)
    if "loss" not in log or "step" not in log:
        return False
    phases = log["phase"] if "phase" in log else pd.Series("train", index=log.index)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for phase, style in (("train", "-"), ("val", "o-")):
        part = log[phases == phase].dropna(subset=["loss"])
        if len(part):
            ax.plot(part["step"], part["loss"], style, label=f"{phase} loss")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def curves_section(run: RunDir, folder: Path, stages: list[str]) -> str:
    """One PNG per stage that logged training (curves/<stage>.png), linked from the card."""
    lines = []
    for stage in stages:
        log = run.stage(stage) / "log.csv"
        png = Path(CURVES_DIR) / f"{stage}.png"
        if log.is_file() and plot_curve(log, folder / png, f"{stage}: loss vs step"):
            lines.append(f"![{stage}]({png.as_posix()})")
        else:
            lines.append(f"- {stage}: no training log (not trained by namd, or no loss logged)")
    return "\n\n".join(lines) + "\n"


def readout_section(run: RunDir) -> str:
    """The radiologist's readout every prediction carries (namd.clinical.readout): what it
    reports, the Lung-RADS version and interval, and the measurer error it draws per type."""
    from namd.clinical import READOUT_NOTICE
    from namd.config import load_config

    saved = run.saved_config()
    cfg = load_config(base=saved).readout if saved is not None else load_config().readout
    lines = ["Each prediction carries a readout of its K virtual follow-ups: the baseline's "
             f"Lung-RADS v{cfg.version} category (from the record and from the image), the "
             "distribution of the follow-up category and the management of the most likely one, "
             "P(growth > 1.5 mm), P(growth >= 2 mm), the volume-doubling time (median, 95% "
             "interval, P(VDT < 400 days); \"no growth\" when it does not grow) and the count of "
             f"samples that could not be measured. Interval: {cfg.interval_days:g} days; "
             f"{cfg.draws} drawn measurement errors per sample. See docs/readout.md.", "",
             "| nodule type | bias (mm) | sd of one size (mm) | sd of a growth (mm) |",
             "|---|---|---|---|"]
    for kind in ("solid", "part-solid", "non-solid"):
        e = cfg.error(kind)
        lines.append(f"| {kind} | {e.bias_mm:+.2f} | {e.size_sd_mm:.2f} | {e.growth_sd_mm:.2f} |")
    lines += ["", "The measurer's error was measured on synthetic nodules against the generator's "
              "true diameters; no real nodule of the project has a diameter reference.", "",
              READOUT_NOTICE]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, run: RunDir, dirs: dict[str, str], facts: dict[str, Any]) -> Path:
    """Write folder/README.md and folder/curves/*.png for the model of `run` (stage names `dirs`)."""
    folder = Path(folder)
    stages = list(dict.fromkeys([dirs["vae"], dirs["prior"], dirs["cond"], "evaluator"]))
    card = "\n".join([
        f"# NAMD model ({facts['method']})", "",
        "Virtual one-year follow-ups of a lung-nodule CT crop (64 x 64 HU in the paper) conditioned "
        "on the patient's EHR, by a conditional latent diffusion model, scored by a ViT malignancy "
        "evaluator (NAMD).", "",
        f"- model sha256: `{facts['model_sha256']}`", f"- namd version: {facts['namd_version']}",
        f"- sampling defaults: {facts['sampling']}", f"- context encoder: {facts['text']}",
        f"- probability: {facts['probability']}", "",
        "## Intended use", "", "Research use, not a medical device.", "",
        "## Training data", "", cohort_section(run),
        "## Table 1", "", metrics_section(run),
        "## Training curves", "", curves_section(run, folder, stages),
        "## Radiologist's readout (Lung-RADS, growth, doubling time)", "", readout_section(run),
        "## Known limits", "", *[f"- {line}" for line in LIMITS], ""])
    atomic_write_text(folder / "README.md", card)
    return folder / "README.md"
