"""Table 1 as the paper prints it: per row the image-quality columns (LPIPS, FID), the diagnosis
columns (AUROC, AUPRC: mean +- std over the K sample runs), and beside them what this project
adds: the mean-probability scores, the perceptual distance of the run's own evaluator, the
known-future score (energy distance to the simulator's futures of each nodule) and the paper's
own numbers for the rows it has.

Rows are grouped like the paper's: real crops, deterministic rows (the copies of the baseline and
the methods that draw no sample), stochastic methods. Every cell comes from metrics.json; a
column that this run could not compute shows why once, under the table.
"""

from __future__ import annotations

import html
from typing import Any

from namd.config import methods
from namd.evaluation.report.html import fmt_stat
from namd.evaluation.rows import COPY_ROWS, REAL_ROWS, generated, paper_numbers, row_label

KNOWN_FUTURE_KEY = "energy_diameter_mm"  # the headline known-future score (mm)


def _num(value: Any, std: Any = None) -> str:
    """'0.805 ± 0.018' or '0.805' with the report's decimals (html.fmt_stat); '–' when absent
    or not a number."""
    if not _number(value):
        return "–"
    return fmt_stat({"mean": value, "std": std} if _number(std) else value, None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stat(block: Any, spread: bool = True) -> str:
    """mean ± std of a {"mean", "std"} block, the mean alone for a single-run row (`spread`
    False); a note string is not a number: '–'."""
    if not isinstance(block, dict):
        return "–"
    return _num(block.get("mean"), block.get("std") if spread else None)


def groups() -> list[tuple[str, list[str]]]:
    """The paper's row groups with this project's rows."""
    stochastic = [n for n in generated() if methods.get(n).stochastic]
    deterministic = [*COPY_ROWS, *(n for n in generated() if not methods.get(n).stochastic)]
    return [("Real image baselines", list(REAL_ROWS)), ("Deterministic", deterministic),
            ("Stochastic methods", stochastic)]


def _paper_cell(name: str) -> str:
    """The paper's LPIPS / FID / AUROC / AUPRC of a row, '–' where it has none."""
    p = paper_numbers(name)
    if not p:
        return "–"
    cells = [_num(p.get(k), p.get(f"{k}_std")) for k in ("lpips", "fid", "auroc", "auprc")]
    return " / ".join(cells)


def _quality_cells(iq: dict) -> list[str]:
    """LPIPS, FID (mean ± std over K) and the evaluator-feature distance of one row."""
    fid = _num(iq.get("fid"), iq.get("fid_std"))
    return [_stat(iq.get("lpips")), fid, _stat(iq.get("evaluator_feature_distance"))]


def _known_future_cell(block: dict, name: str) -> str:
    """The row's energy distance to its nodules' known futures (diameter, mm)."""
    row = (block.get("rows") or {}).get(name) or {}
    return _num(row.get(KNOWN_FUTURE_KEY))


def _why_absent(metrics: dict) -> list[str]:
    """One line per column this run left empty, with the reason metrics.json gives."""
    notes, iq = [], metrics.get("image_quality") or {}
    for key, title in (("lpips", "LPIPS"), ("fid", "FID")):
        reasons = {v.get(key) for v in iq.values() if isinstance(v, dict) and isinstance(v.get(key), str)}
        notes += [f"{title}: {r}" for r in sorted(reasons)]
    kf = metrics.get("known_futures") or {}
    if kf.get("status", "not available: metrics.json has no known_futures block") != "ok":
        notes.append(f"Known futures: {kf.get('status', 'not available: metrics.json has no known_futures block')}")
    return notes


def inferred(name: str) -> str:
    """What a compared method's row rests on that no source gives ('' for other rows)."""
    return methods.METHODS[name].inferred if name in methods.METHODS else ""


def table1(metrics: dict[str, Any]) -> str:
    """Table 1 of the paper from metrics.json, as HTML."""
    rows = {r.get("name"): r for r in metrics.get("rows", [])}
    iq_all = metrics.get("image_quality") or {}
    kf = metrics.get("known_futures") or {}
    head = ("<tr><th>Method</th><th>LPIPS ↓</th><th>FID ↓</th><th>evaluator-feature distance ↓</th>"
            "<th>known futures: energy distance, diameter (mm) ↓</th><th>AUROC ↑</th><th>AUPRC ↑</th>"
            "<th>AUROC / AUPRC of the mean p</th><th>paper: LPIPS / FID / AUROC / AUPRC</th></tr>")
    body = []
    for title, names in groups():
        body.append(f'<tr><th colspan=9>{html.escape(title)}</th></tr>')
        for name in names:
            row = rows.get(name)
            if row is None:
                continue
            cls = ' class="namd"' if name == methods.REFERENCE else ""
            label = html.escape(row_label(name)) + ("<sup>†</sup>" if inferred(name) else "")
            if row.get("status", "ok") != "ok":
                body.append(f"<tr{cls}><td>{label}</td><td colspan=7 class=muted>"
                            f"{html.escape(str(row.get('status')))}</td>"
                            f"<td class=num>{html.escape(_paper_cell(name))}</td></tr>")
                continue
            iq = iq_all.get(name) or {}
            quality = _quality_cells(iq) if iq.get("status") == "ok" else ["–", "–", "–"]
            mean_p = "–"
            if row.get("mean_prob_auroc") is not None:
                mean_p = f"{_num(row['mean_prob_auroc'])} / {_num(row.get('mean_prob_auprc'))}"
            runs = (row.get("k") or 1) > 1
            cells = [*quality, _known_future_cell(kf, name), _stat(row.get("auroc"), runs),
                     _stat(row.get("auprc"), runs), mean_p, _paper_cell(name)]
            body.append(f"<tr{cls}><td>{label}</td>"
                        + "".join(f"<td class=num>{html.escape(c)}</td>" for c in cells) + "</tr>")
    notes = _why_absent(metrics) + [f"† {row_label(n)}: {inferred(n)} (inferred: no source says "
                                    "it; docs/compared-methods.md)." for n in rows if inferred(n)]
    foot = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)  # not a failure
    return f"<table>{head}{''.join(body)}</table>{foot}"
