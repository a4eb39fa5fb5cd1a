"""HTML pieces of the report: the page, the result tables and the provenance section.

All text that comes from files goes through html.escape.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from namd.evaluation.rows import row_label
from namd.evaluation.table_text import k_differs, k_note
from namd.run.layout import RunDir, stages
from namd.run.provenance import RUN_INFO, package_versions

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.namd td{background:#eef6ff}td.num{font-variant-numeric:tabular-nums}
.missing{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em .8em}
.error{background:#fdecec;border-left:4px solid #c62828;padding:.5em .8em}
.note,.file,.muted{color:#666;font-size:.9em}figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow:auto;max-height:30em;font-size:.85em}
nav a{margin-right:1em}.status-ok{color:#2e7d32}.status-missing,.status-partial{color:#b26a00}
.status-error{color:#c62828}ul.reading li{margin-bottom:.4em}
"""


def esc(value: Any) -> str:
    """Escaped text of any value."""
    return html.escape(str(value))


def _digits(x: float, digits: int | None) -> int:
    """The given decimals, else 3 below 10 and 1 above (HU, dB and FID need no more), and three
    significant digits below 0.01 (the evaluator-feature distance)."""
    if digits is None and 0 < abs(x) < 0.01:
        return 2 - math.floor(math.log10(abs(x)))
    return digits if digits is not None else 3 if abs(x) < 10 else 1


def fmt_stat(m: Any, digits: int | None = 3) -> str:
    """'0.805 ± 0.018 [0.770, 0.840]' from {"mean", "std", "ci95"}; numbers, notes as they are."""
    if m is None:
        return "–"
    if isinstance(m, str):
        return m
    if isinstance(m, int | float):
        return f"{m:.{_digits(m, digits)}f}"
    if m.get("mean") is None:
        return "–"
    d = _digits(m["mean"], digits)
    text = f"{m['mean']:.{d}f}"
    if m.get("std") is not None:
        text += f" ± {m['std']:.{d}f}"
    if m.get("ci95"):
        lo, hi = m["ci95"]
        text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def _delta(vs: dict[str, Any], metric: str, p_key: str, test_key: str) -> str:
    """'+0.063 (p = 0.016, DeLong)' for one paired comparison, '' when not recorded."""
    if vs.get(f"delta_{metric}") is None:
        return ""
    text = f"{vs[f'delta_{metric}']:+.3f}"
    if vs.get(p_key) is not None:
        text += f" (p = {vs[p_key]:.3g}, {vs.get(test_key, 'paired test')})"
    return text


def results_table(metrics: dict[str, Any], level: float = 0.95) -> str:
    """The comparison table: one row per method, rows not run say why."""
    ci = f"[{level:.0%} CI]"
    head = (f"<tr><th>Row</th><th>AUROC mean ± std {ci}</th><th>AUPRC mean ± std {ci}</th>"
            "<th>AUROC / AUPRC of mean p</th><th>Δ vs real baseline (paired test)</th></tr>")
    body, differs = [], k_differs(metrics)
    for row in metrics.get("rows", []):
        name = row.get("name", "?")
        label = f"{esc(row_label(name))}<br><span class=muted>{esc(name)}</span>"
        if name in differs:
            label += f' <span class="k-differs">K = {esc(differs[name])} *</span>'
        cls = ' class="namd"' if name == "namd" else ""
        if row.get("status", "ok") != "ok":
            body.append(f"<tr{cls}><td>{label}</td><td colspan=4 class=muted>"
                        f"{esc(row.get('status'))}</td></tr>")
            continue
        mean_p = ""
        if row.get("mean_prob_auroc") is not None:
            mean_p = f"{fmt_stat(row['mean_prob_auroc'])} / {fmt_stat(row.get('mean_prob_auprc'))}"
        vs = row.get("vs_real_baseline") or {}
        copy = row.get("vs_vae_copy_baseline") or {}
        deltas = [f"{m}: {d}" for m, d in (
            ("AUROC", _delta(vs, "auroc", "p_value", "test")),
            ("AUPRC", _delta(vs, "auprc", "p_value_auprc", "test_auprc")),
            ("AUROC vs VAE copy", _delta(copy, "auroc", "p_value", "test"))) if d]
        body.append(f"<tr{cls}><td>{label}</td><td class=num>{esc(fmt_stat(row.get('auroc')))}</td>"
                    f"<td class=num>{esc(fmt_stat(row.get('auprc')))}</td>"
                    f"<td class=num>{esc(mean_p)}</td>"
                    f"<td class=num>{'<br>'.join(esc(d) for d in deltas)}</td></tr>")
    note = k_note(metrics)
    return (f"<table>{head}{''.join(body)}</table>"
            + (f'<p class="missing">{esc(note)}</p>' if note else ""))


QUALITY_COLUMNS = (("mae_hu", "MAE (HU) ↓"), ("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"),
                   ("frechet_evaluator", "Fréchet, evaluator features ↓"),
                   ("evaluator_feature_distance", "evaluator feature distance ↓"),
                   ("diameter_error_mm", "diameter error (mm) ↓"), ("lpips", "LPIPS ↓"),
                   ("fid", "FID ↓"))


# the measures every evaluated row has (LPIPS and FID may be "not computed: <why>";
# evaluator_feature_distance is left out: metrics.json files written before it lack it)
QUALITY_NUMBERS = ("mae_hu", "psnr", "ssim", "frechet_evaluator", "diameter_error_mm")
# the network each pretrained-network measure was computed with, named under the table
QUALITY_BACKBONES = (("lpips", "LPIPS"), ("fid", "FID"))


def quality_table(quality: dict[str, Any]) -> str:
    """Image-quality metrics per generated row; 'not run' rows and 'not computed' notes shown."""
    head = "<tr><th>Row</th>" + "".join(f"<th>{esc(t)}</th>" for _, t in QUALITY_COLUMNS) + "</tr>"
    rows, absent, backbones = [], [], {}
    for name, values in quality.items():
        values = values or {}
        for key, title in QUALITY_BACKBONES:
            if values.get(f"{key}_backbone"):
                backbones[title] = values[f"{key}_backbone"]
        if values.get("status", "ok") != "ok":
            rows.append(f"<tr><td>{esc(row_label(name))}</td><td colspan={len(QUALITY_COLUMNS)}"
                        f" class=muted>{esc(values['status'])}</td></tr>")
            continue
        cells = []
        absent += [f"{row_label(name)}: {key}" for key in QUALITY_NUMBERS
                   if fmt_stat(values.get(key), None) == "–"]
        for key, _ in QUALITY_COLUMNS:
            text = fmt_stat(values.get(key), None)
            if key in ("frechet_evaluator", "fid") and isinstance(values.get(f"{key}_std"), int | float):
                text += f" ± {fmt_stat(values[f'{key}_std'], None)}"
            cells.append(f"<td class=num>{esc(text)}</td>")
        rows.append(f"<tr><td>{esc(row_label(name))}</td>{''.join(cells)}</tr>")
    note = (f'<p class="missing">No finite value in metrics.json (shown –): '
            f"{esc('; '.join(absent))}.</p>" if absent else "")
    if backbones:
        note += ("<p class=muted>" + esc("; ".join(f"{t}: {b}" for t, b in backbones.items()))
                 + ".</p>")
    return f"<table>{head}{''.join(rows)}</table>{note}"


def baseline_use_table(blocks: dict[str, Any]) -> str:
    """Per variant and timestep band: the cond model's noise-prediction loss with the true and
    with shuffled baselines, the prior's on the same inputs, and their ratio."""
    head = ("<tr><th>Variant</th><th>timesteps</th><th>loss, true baseline</th>"
            "<th>loss, shuffled baselines</th><th>prior's loss</th><th>true / shuffled ↓</th></tr>")
    rows = []
    for name, block in blocks.items():
        if block.get("status"):
            rows.append(f"<tr><td>{esc(row_label(name))}</td><td colspan=5 class=muted>"
                        f"{esc(block['status'])}</td></tr>")
            continue
        bands = [*block.get("bands", []), {"t": ["all", ""], "true": block["loss_true"],
                                           "shuffled": block["loss_shuffled"],
                                           "prior": block.get("loss_prior"), "ratio": block["ratio"]}]
        for i, b in enumerate(bands):
            first = (f"<td rowspan={len(bands)}>{esc(row_label(name))}<br><span class=muted>x0 "
                     f"nearest own baseline: {block['x0_nearest_own_baseline']:.0%}</span></td>"
                     if i == 0 else "")
            t = "all" if b["t"][0] == "all" else f"{b['t'][0]}-{b['t'][1]}"
            rows.append(f"<tr>{first}<td>{esc(t)}</td>" + "".join(
                f"<td class=num>{esc(fmt_stat(b.get(k), 4))}</td>" for k in ("true", "shuffled", "prior"))
                + f"<td class=num>{esc(fmt_stat(b['ratio'], 2))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


FIDELITY_COLUMNS = (("mean_of_k_mae_hu", "mean of K: MAE (HU) ↓"),
                    ("vae_copy_mae_hu", "VAE copy: MAE (HU)"),
                    ("mean_of_k_mae_to_vae_copy", "ratio ↓"),
                    ("nearest_own_followup_share", "nearest own follow-up ↑"),
                    ("vae_copy_nearest_own_followup_share", "VAE copy: nearest own"),
                    ("per_sample_mae_hu", "per sample: MAE (HU)"),
                    ("spread_over_k_hu", "spread over K (HU)"))


def fidelity_table(blocks: dict[str, Any]) -> str:
    """Mean of K against the real follow-up, beside the VAE copy and the samples' spread."""
    head = "<tr><th>Variant</th>" + "".join(f"<th>{esc(t)}</th>" for _, t in FIDELITY_COLUMNS) + "</tr>"
    rows = [f"<tr><td>{esc(row_label(name))}</td>" + "".join(
        f"<td class=num>{esc(fmt_stat(b.get(k), 2 if 'share' in k or 'to_vae' in k else 1))}</td>"
        for k, _ in FIDELITY_COLUMNS) + "</tr>" for name, b in blocks.items()]
    return f"<table>{head}{''.join(rows)}</table>"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, to compare configs key by key."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 6) -> str:
    """Keys whose values differ between two configs (at most `limit` named)."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    if not keys:
        return "same as RUN/config.yaml"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "differs in " + ", ".join(keys[:limit]) + more


def provenance_html(run: RunDir, report_config: dict[str, Any]) -> str:
    """The run's config.yaml, each stage's run_info.json summary, and package versions."""
    saved = run.saved_config()
    cfg_path = run.path / "config.yaml"
    parts = [f"<h3>RUN/config.yaml</h3><pre>{esc(cfg_path.read_text())}</pre>" if saved is not None
             else f'<p class="missing">Missing: <code>{esc(cfg_path)}</code>. Written by the first '
                  "stage of a run (e.g. <code>namd demo</code>).</p>"]
    rows, versions = [], {}
    for stage in stages():
        path = run.stage(stage) / RUN_INFO
        if stage == "report" or not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError:
            rows.append(f"<tr><td>{esc(stage)}</td><td colspan=5 class=error>{esc(path)}: not "
                        "valid JSON</td></tr>")
            continue
        for pkg, ver in (info.get("versions") or {}).items():
            versions.setdefault(pkg, {}).setdefault(str(ver), []).append(stage)
        diff = _config_diff(info.get("config") or {}, saved) if saved is not None else ""
        rows.append(f"<tr><td>{esc(stage)}</td><td>{esc(info.get('complete', False))}</td>"
                    f"<td>{esc(info.get('time_utc', ''))}</td><td>{esc(info.get('seed'))}</td>"
                    f"<td><code>{esc(info.get('command', ''))}</code></td>"
                    f"<td>{esc(diff)}</td></tr>")
    parts.append("<h3>Stages</h3>" + (
        "<table><tr><th>stage</th><th>complete</th><th>finished (UTC)</th><th>seed</th>"
        "<th>command</th><th>config</th></tr>" + "".join(rows) + "</table>" if rows
        else '<p class="missing">No stage of this run has a run_info.json yet.</p>'))
    for pkg, ver in package_versions().items():
        versions.setdefault(pkg, {}).setdefault(ver, []).append("report")
    vrows = "".join(
        f"<tr><td>{esc(pkg)}</td><td>" + "<br>".join(
            f"{esc(ver)} <span class=muted>({esc(', '.join(stages))})</span>"
            for ver, stages in by_ver.items()) + "</td></tr>"
        for pkg, by_ver in versions.items())
    parts.append("<h3>Package versions (per stage)</h3><table><tr><th>package</th><th>version "
                 f"(stages)</th></tr>{vrows}</table>")
    if saved is not None:
        own = _config_diff(report_config, saved)
        parts.append(f"<p class=note>The report's own config: {esc(own)}.</p>")
    return "".join(parts)


def page(title: str, sections: list) -> str:
    """The whole HTML document: header, table of contents with each section's status, sections."""
    toc = "".join(f'<a href="#{s.key}">{esc(s.title)}</a> <span class="status-{s.status}">'
                  f"({esc(s.status)})</span><br>" for s in sections)
    body = "".join(f'<section id="{s.key}" data-status="{s.status}"><h2>{esc(s.title)}</h2>'
                   f"{s.body}</section>" for s in sections)
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{esc(title)}"
            f"</title><style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
            "<p class=note>Made by <code>namd report</code>. Figures are embedded; the PNG files "
            f"lie beside this page.</p><nav>{toc}</nav>{body}</body></html>")

