"""The one-file HTML report of a run: RUN/report/index.html (issue 6).

Self-contained: the figures are embedded as base64 PNGs (and also saved beside index.html).
Every section is always present; a section whose inputs are missing (a stage not run) says
which file is missing and which command makes it. A damaged input (a file of a finished stage
missing, cut short or malformed) is a RunFileError: no report is written.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from namd.config import methods
from namd.evaluation import variance
from namd.evaluation.reading import ok_rows, reading
from namd.evaluation.report import figures as F
from namd.evaluation.report import figures_examples as FX
from namd.evaluation.report import methods_figure as MF
from namd.evaluation.report.calibration import section_calibration
from namd.evaluation.report.gap import section_gap
from namd.evaluation.report.growth import section_growth
from namd.evaluation.report.html import (
    baseline_use_table,
    fidelity_table,
    page,
    provenance_html,
    quality_table,
    results_table,
)
from namd.evaluation.report.inputs import Context, MissingInput
from namd.evaluation.report.known_futures import section_known_futures
from namd.evaluation.report.lungrads import section_lungrads
from namd.evaluation.report.table1 import table1
from namd.evaluation.rows import row_label
from namd.evaluation.schema import TABLE_FIELDS
from namd.run.contract import RunFileError, command_for
from namd.run.layout import RunDir, stages
from namd.run.provenance import atomic_dir, atomic_write_bytes, atomic_write_text
from namd.run.readers import read_json

log = logging.getLogger(__name__)

TSNE_MAX_CROPS = 2000  # t-SNE cost grows ~n log n; a seeded subsample keeps the report quick
__all__ = ["BUILDERS", "Section", "build_report"]


@dataclass
class Section:
    """One section of the page: HTML body and whether its inputs were there."""

    key: str
    title: str
    body: str = ""
    status: str = "ok"  # ok | partial | missing | error


def _p(text: str, cls: str = "") -> str:
    """An escaped paragraph."""
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


# ---------------------------------------------------------------- sections

def section_table(ctx: Context) -> str:
    """The comparison table of metrics.json with how its intervals were made."""
    m = ctx.metrics(TABLE_FIELDS)
    boot = m.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    how = []
    if boot.get("n"):
        how.append(f"{boot['n']} resamples")
    if boot.get("stratified"):
        how.append("stratified by label")
    text = (f"Split {m.get('split', 'test')}: {m.get('n_test')} nodules, {m.get('n_malignant')} "
            f"malignant. Generated rows: mean ± std over the K = {m.get('k')} sample runs. "
            f"[{level:.0%} CI]: bootstrap over nodules"
            + (f" ({', '.join(how)})" if how else "")
            + (f"; for generated rows the CI is of {boot['generated_rows_ci_of']}"
               if boot.get("generated_rows_ci_of") else "") + ".")
    extra = ""
    if m.get("variance"):
        extra = ("<details><summary>Variance analysis from metrics.json</summary><pre>"
                 + html.escape(json.dumps({k: v for k, v in m.items() if k.startswith("variance")},
                                          indent=2)) + "</pre></details>")
    paper = _p("As the paper's Table 1 prints it, with this project's columns beside: "
               "AUROC and AUPRC as mean ± std over the K sample runs; the paper's own "
               "numbers (NLST, 450 test pairs) in the last column.")
    return (paper + table1(m) + _p("Every row with its interval and paired tests:")
            + _p(text) + results_table(m, level) + extra)


def section_quality(ctx: Context) -> str:
    """The image-quality block of metrics.json."""
    quality = ctx.metrics().get("image_quality") or {}
    if not quality:
        return _p("metrics.json holds no image-quality block.", "missing")
    return (_p("Generated (and copied-baseline) follow-ups against the real follow-up crop.")
            + quality_table(quality))


def section_baseline(ctx: Context) -> str:
    """What the baseline buys: the shuffled-baseline loss ratio and the samples' fidelity."""
    m = ctx.metrics()
    use, fid = m.get("baseline_use") or {}, m.get("fidelity") or {}
    if not use and not fid:
        return _p("metrics.json holds no baseline_use or fidelity block.", "missing")
    text = _p("A follow-up is mostly its baseline plus a change. On the validation pairs, with the "
              "same timesteps and noise for every model: the conditional U-Net's noise-prediction "
              "loss with each pair's own baseline latent and with baselines shuffled among the "
              "pairs (far below 1 when the baseline is used), beside the prior's loss on the same "
              "follow-ups.") + baseline_use_table(use)
    if fid:
        text += _p("On the evaluated split: the mean of the K samples against the real follow-up, "
                   "beside the baseline passed through the VAE unchanged (the no-change ceiling), "
                   "the share of nodules whose mean of K is nearer their own real follow-up than "
                   "any other nodule's, and the per-sample error and spread over K (collapsed "
                   "samples would show no spread).") + fidelity_table(fid)
    return text


def section_curves(ctx: Context) -> str:
    """ROC and PR curves of the rows that ran (all scored rows when metrics.json is absent)."""
    df = ctx.per_nodule()
    metrics, available = ctx.metrics_or_none(), F.row_scores(df)
    scores = available if metrics is None else {n: available[n] for n in ok_rows(metrics)
                                                 if n in available}
    if not scores:
        return _p("per_nodule.csv has no probability columns.", "missing")
    fig, areas = F.roc_pr_figure(df["label"].to_numpy(), scores)
    skipped = [f"{row_label(n)}: {a['skipped']}" for n, a in areas.items() if "skipped" in a]
    return (ctx.figure("roc_pr.png", fig, "ROC and precision-recall curves of the table's rows; "
                       "generated rows use each nodule's mean probability over the K samples.")
            + (_p("Not drawn: " + "; ".join(skipped)) if skipped else ""))


def _tsne_crops(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """HU crops and long-axis diameters of the test split (a seeded subsample when large)."""
    cohort = ctx.cohort()
    rows = cohort.crops("test")
    if rows.empty:
        raise ValueError(f"{cohort.path}: the cohort has no test crops")
    if len(rows) > TSNE_MAX_CROPS:
        rng = np.random.default_rng(ctx.config.eval.seed)
        rows = rows.iloc[np.sort(rng.choice(len(rows), TSNE_MAX_CROPS, replace=False))]
    diameter = rows["SCT_LONG_DIA"].astype(float).to_numpy()
    return cohort.images(rows["crop_index"].to_numpy()), diameter


def section_latent(ctx: Context) -> str:
    """Figure 2: the same test crops through the aligned and (when present) unaligned VAE."""
    aligned_dir, unaligned_dir = (methods.get(n).stage("vae").folder for n in (methods.REFERENCE, "no_align"))
    aligned = ctx.need(ctx.run.stage(aligned_dir), aligned_dir)
    hu, diameter = _tsne_crops(ctx)
    window, seed = tuple(ctx.config.data.window_hu), ctx.config.eval.seed
    panels = [(f"NAMD VAE with L_align (RUN/{aligned_dir})",
               F.tsne_embed(F.encode_crops(aligned, hu, window), seed))]
    unaligned, note = ctx.run.stage(unaligned_dir), None
    if unaligned.exists():
        panels.append((f"VAE without L_align (RUN/{unaligned_dir})",
                       F.tsne_embed(F.encode_crops(unaligned, hu, window), seed)))
    else:
        note = (f"The unaligned VAE ({unaligned}) is missing, so only the aligned map is shown; "
                f"make it with `{command_for(ctx.run.path, unaligned_dir)}`.")
    ctx.facts["tsne"] = {key: F.diameter_neighbour_ratio(emb, diameter)
                         for key, (_, emb) in zip(("aligned", "unaligned"), panels, strict=False)}
    body = ctx.figure("fig2_tsne.png", F.tsne_figure(panels, diameter, note),
                      f"Figure 2: t-SNE of the posterior-mean latents of {len(hu)} test-split "
                      "crops (baselines and follow-ups), coloured by long-axis diameter. The "
                      "neighbour ratio compares diameter differences between map neighbours "
                      "with those between random crops.")
    body += (MissingInput(unaligned, unaligned_dir, ctx.run).html() if note else "")
    return body + stage_reports_html(ctx.run)


def stage_reports_html(run: RunDir) -> str:
    """The latent-space measures each `namd train vae` stage wrote (its report.json), if any."""
    from namd.evaluation.vae_report import REPORT_FILE

    vaes = [s.folder for m in methods.METHODS.values() for s in m.trains if s.kind == "vae"]
    paths = {stage: run.stage(stage) / REPORT_FILE for stage in vaes}
    reports = {stage: read_json(p, stage) for stage, p in paths.items() if p.is_file()}
    if not reports:
        return ""
    keys = list(dict.fromkeys(k for r in reports.values() for k, v in r.items()
                              if isinstance(v, int | float | str)))
    head = "<tr><th>measure</th>" + "".join(f"<th>RUN/{s}</th>" for s in reports) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(
        f"<td class=num>{html.escape(_cell(r.get(k)))}</td>" for r in reports.values()) + "</tr>"
        for k in keys)
    return (_p(f"Latent-space measures from each VAE stage's {REPORT_FILE} (written by "
               "`namd train vae`; see evaluation/vae_report.py for their definitions):")
            + f"<table>{head}{rows}</table>")


def _cell(value: Any) -> str:
    """A report.json value as table text."""
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _variant(ctx: Context) -> str:
    """The generated variant Figure 3 shows: NAMD, else the first one evaluated."""
    variants = F.generated_variants(ctx.per_nodule())
    if not variants:
        raise ValueError(f"{ctx.run.stage('eval') / 'per_nodule.csv'}: no p_<variant>_k* columns "
                         "(no generated variant was evaluated)")
    return methods.REFERENCE if methods.REFERENCE in variants else next(iter(variants))


def _median(x: np.ndarray) -> float:
    """Median, NaN for an empty group."""
    return float(np.median(x)) if len(x) else float("nan")


def section_variance(ctx: Context) -> str:
    """Figure 3: error vs variance, variance by label, and the example rows (needs samples)."""
    df, variant = ctx.per_nodule(), _variant(ctx)
    p = F.sample_matrix(df, variant)
    keep = np.isfinite(p).all(1)
    p, labels, pairs = p[keep], df["label"].to_numpy()[keep], df["pair_id"].to_numpy()[keep]
    err, var = F.error_and_variance(p, labels)
    examples, absent = FX.select_examples(err, var, labels)
    ctx.facts["variance"] = {"variant": variant, "mean": float(var.mean()),
                             "median_benign": _median(var[labels == 0]),
                             "median_malignant": _median(var[labels == 1])}
    body = "" if variant == methods.REFERENCE else _p(
        f"NAMD itself was not evaluated; showing {row_label(variant)}.")
    if not keep.all():
        body += _p(f"{int((~keep).sum())} nodules without all K probabilities are left out.")
    marks = [(e.row, e.tag) for e in examples]
    body += ctx.figure("fig3_error_variance.png",
                       F.error_variance_figure(p, labels, variant, marks),
                       "Figure 3 (left): prediction error against predictive variance over K, and "
                       "variance by true label. Circled: the example nodules below (C correct, "
                       "U unsure, I incorrect; 0 benign, 1 malignant).")
    body += _p(FX.RULES, "note")
    stage = methods.get(variant).samples
    try:
        samples, index = ctx.samples(stage)
        cohort = ctx.cohort()
    except MissingInput as exc:
        return body + exc.html()
    base, follow, gen = FX.example_arrays([str(pairs[e.row]) for e in examples], samples, index,
                                          cohort, str(ctx.run.stage(stage)))
    body += ctx.figure("fig3_examples.png",
                       FX.examples_figure(examples, base, follow, gen,
                                          tuple(ctx.config.data.window_hu), variant),
                       "Figure 3 (right): example nodules; variance and error maps are over the "
                       "K samples.")
    return body + (_p("No case for: " + "; ".join(absent) + ".") if absent else "")


def section_methods(ctx: Context) -> str:
    """Figure 3, extended: each sampled method's follow-up for the same test nodules."""
    sampled = [m for m in methods.METHODS.values() if ctx.run.stage(m.samples).is_dir()]
    if not sampled:
        raise MissingInput(ctx.run.stage(methods.get(methods.REFERENCE).samples) / "samples.npy",
                           methods.get(methods.REFERENCE).samples, ctx.run)
    loaded = {m.name: ctx.samples(m.samples) for m in sampled}
    index = next(iter(loaded.values()))[1]
    known = index[index["followup_index"].notna() & index["label"].notna()]
    pairs = [p for p in MF.common_pairs({n: i for n, (_, i) in loaded.items()})
             if p in set(known["pair_id"])]
    if not pairs:
        raise ValueError("no test pair with a known follow-up and label is in every sample folder")
    rows = known.set_index("pair_id").loc[pairs]
    cohort = ctx.cohort()
    base = cohort.images(rows["baseline_index"].astype(np.int64).to_numpy())
    follow = cohort.images(rows["followup_index"].astype(np.int64).to_numpy())
    labels = rows["label"].astype(int).to_numpy()
    picked = MF.pick_pairs(MF.central_change(base, follow), labels)
    chosen = [pairs[i] for i in picked]
    shown = {}
    for name, (samples, idx) in loaded.items():
        where = {p: i for i, p in enumerate(idx["pair_id"])}
        shown[name] = np.stack([np.asarray(samples[where[p]], np.float32) for p in chosen])
    fig = MF.methods_figure(base[picked], follow[picked], shown, labels[picked], chosen,
                            tuple(ctx.config.data.window_hu))
    return ctx.figure("fig3_methods.png", fig,
                      "Figure 3, extended: the same test nodules (per label, the largest, "
                      "upper-quartile and median real change at the centre) through every "
                      "method sampled in this run; sample 1 of a stochastic method (the same "
                      "seed rule for all), the one follow-up of a deterministic one.")


def section_running_variance(ctx: Context) -> str:
    """Figure 5: running variance against K for every evaluated generated variant."""
    df = ctx.per_nodule()
    curves = {}
    for variant in F.generated_variants(df):
        p = F.sample_matrix(df, variant)
        p = p[np.isfinite(p).all(1)]
        if len(p):
            curves[variant] = variance.running_variance(p)
    if not curves:
        raise ValueError("per_nodule.csv has no complete p_<variant>_k* columns")
    name = "namd" if "namd" in curves else next(iter(curves))
    mean_curve = curves[name].mean(0)
    ctx.facts["stable"] = {"variant": name, "k": len(mean_curve),
                           "stable_k": variance.stable_k(mean_curve),
                           "tolerance": variance.STABLE_TOLERANCE}
    k_used = (ctx.metrics_or_none() or {}).get("k")
    fig = F.running_variance_figure(curves, k_used, seed=ctx.config.eval.seed)
    return ctx.figure("fig5_running_variance.png", fig,
                      "Figure 5: running variance of the evaluator's probability against the "
                      "number of samples K (faint: up to 50 random nodules; black: mean over all).")


def section_provenance(ctx: Context) -> str:
    """The run's config, each stage's run_info.json and package versions."""
    return provenance_html(ctx.run, ctx.config.model_dump(mode="json"))


def section_reading(ctx: Context) -> str:
    """The plain-language reading (built last: it uses what the figures measured)."""
    items = "".join(f"<li>{html.escape(s)}</li>" for s in reading(ctx.metrics(TABLE_FIELDS),
                                                                  ctx.facts))
    return f"<ul class=reading>{items}</ul>"


BUILDERS = (
    ("reading", "Reading of the results", section_reading),
    ("table", "Diagnosis performance (AUROC, AUPRC)", section_table),
    ("quality", "Image quality", section_quality),
    ("baseline", "What the baseline buys", section_baseline),
    ("growth", "Growth: does the generator predict change?", section_growth),
    ("known_futures", "Known futures: how close is each row to the distribution of futures?",
     section_known_futures),
    ("gap", "Gap closure: how much of the way from baseline to follow-up does generation go?",
     section_gap),
    ("lungrads", "What a radiologist reads: Lung-RADS, growth and doubling time",
     section_lungrads),
    ("curves", "ROC and precision-recall curves", section_curves),
    ("calibration", "Calibration: does a probability mean what it says?", section_calibration),
    ("latent", "Figure 2: the latent space (t-SNE)", section_latent),
    ("variance", "Figure 3: prediction error and predictive variance", section_variance),
    ("methods", "Figure 3, extended: every method on the same nodules", section_methods),
    ("running", "Figure 5: running variance against K", section_running_variance),
    ("provenance", "Configs and versions", section_provenance),
)


def build_section(ctx: Context, key: str, title: str, builder) -> Section:
    """Run one builder; missing inputs become a note and a section that cannot be drawn shows
    why; a damaged input file (RunFileError) stops the report."""
    try:
        body = builder(ctx)
        status = "partial" if 'class="missing"' in body else "ok"
        return Section(key, title, body, status)
    except MissingInput as exc:
        return Section(key, title, exc.html(), "missing")
    except RunFileError:
        raise
    except (ValueError, KeyError, TypeError, OSError) as exc:
        log.warning("report section %r failed: %s", key, exc)
        return Section(key, title, _p(f"Could not be drawn: {type(exc).__name__}: {exc}", "error"),
                       "error")


def build_report(run: RunDir, config: Any) -> tuple[Path, list[Section]]:
    """Write RUN/report (index.html, the PNGs, run_info.json); returns the page and its sections."""
    for stage in stages():  # every run_info.json the page summarises must be readable
        if run.is_done(stage):
            run.agree(config, stage)  # the figures redraw with this config: it must be theirs
    ctx = Context(run, config)
    order = [b for b in BUILDERS if b[0] != "reading"] + [BUILDERS[0]]  # reading uses the facts
    built = {key: build_section(ctx, key, title, fn) for key, title, fn in order}
    sections = [built[key] for key, _, _ in BUILDERS]
    text = page(f"NAMD report: {run.path.resolve().name}", sections)
    out = run.stage("report")
    with atomic_dir(out, overwrite=True) as tmp:
        for name, png in ctx.images.items():
            atomic_write_bytes(tmp / name, png)
        atomic_write_text(tmp / "index.html", text)
    run.mark_done("report", config, config.eval.seed,
                  sections={s.key: s.status for s in sections}, figures=sorted(ctx.images))
    return out / "index.html", sections
