"""The report's section "Known futures: how close is each row to the distribution of futures?"
from the `known_futures` block of RUN/eval/metrics.json (namd.evaluation.known_futures).

A synthetic cohort knows many one-year futures of each test nodule; every row is scored by the
energy distance between its follow-ups of a nodule and those futures (0 in expectation for a
row drawn from the futures' own distribution), on the nodule's diameter, its density and the
image. The table shows each row's three scores and, for the diameter, its paired intervals
against the copy of the baseline and against NAMD; one sentence reads NAMD against the copy,
the shuffled row and its ablations. A real cohort has no known futures: the section says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from namd.config import methods
from namd.evaluation.report.growth import with_ci
from namd.evaluation.report.html import esc
from namd.evaluation.report.inputs import missing_block
from namd.evaluation.rows import generated, row_label

if TYPE_CHECKING:
    from namd.evaluation.report.inputs import Context

FEATURES = (("diameter_mm", "diameter (mm)"), ("density_hu", "density (HU)"), ("image_hu", "image (HU)"))
EXTRA_ROWS = {"held_out_futures": "Held-out futures (the ceiling)",
              "shuffled": "NAMD's samples of another nodule (shuffled)"}


def _num(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{value:.2f}"


def _delta(block: Any) -> str:
    """'+0.12 [+0.05, +0.20]' of a paired {"delta", "ci95"} (the growth section's format), '–'
    when absent."""
    if not isinstance(block, dict):
        return "–"
    return with_ci(block.get("delta"), block.get("ci95"))


def known_futures_table(block: dict[str, Any]) -> str:
    """One line per scored row: its three energy distances and the diameter's paired deltas."""
    level = (block.get("bootstrap") or {}).get("level", 0.95)
    ref = block.get("shuffled_of", methods.REFERENCE)
    head = ("<tr><th>Row</th>" + "".join(f"<th>energy distance, {t} ↓</th>" for _, t in FEATURES)
            + f"<th>diameter: − copy of the baseline [{level:.0%} CI]</th>"
            + f"<th>diameter: − {esc(row_label(ref))} [{level:.0%} CI]</th></tr>")
    body = []
    for name, row in (block.get("rows") or {}).items():
        label = esc(EXTRA_ROWS.get(name, row_label(name)))
        cls = ' class="namd"' if name == ref else ""
        if row.get("status", "ok") != "ok":
            body.append(f"<tr{cls}><td>{label}</td><td colspan=5 class=muted>"
                        f"{esc(row['status'])}</td></tr>")
            continue
        cells = [_num(row.get(f"energy_{f}")) for f, _ in FEATURES]
        cells += [_delta((row.get("vs_copy_baseline") or {}).get("diameter_mm")),
                  _delta((row.get(f"vs_{ref}") or {}).get("diameter_mm"))]
        body.append(f"<tr{cls}><td>{label}</td>"
                    + "".join(f"<td class=num>{esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _verdict(delta: Any, better: str, worse: str, same: str) -> str:
    """Which way a paired interval points (negative = the row scores lower, i.e. better)."""
    if not isinstance(delta, dict) or delta.get("ci95") is None:
        return "not measured"
    lo, hi = delta["ci95"]
    return better if hi < 0 else worse if lo > 0 else same


def reading(block: dict[str, Any]) -> str:
    """NAMD against the copy and the shuffled row, and whether it separates from its ablations."""
    rows, ref = block.get("rows") or {}, block.get("shuffled_of", methods.REFERENCE)
    namd = rows.get(ref) or {}
    if namd.get("status") != "ok":
        return f"{row_label(ref)} was not scored ({namd.get('status', 'absent')})."
    copy = (namd.get("vs_copy_baseline") or {}).get("diameter_mm")
    parts = [f"On the diameter, {row_label(ref)} is "
             + _verdict(copy, "closer to the futures than copying the baseline",
                        "further from the futures than copying the baseline",
                        "not distinguishable from copying the baseline")]
    shuffled = ((rows.get("shuffled") or {}).get(f"vs_{ref}") or {}).get("diameter_mm")
    parts.append("its samples given to other nodules (shuffled) score " + _verdict(
        shuffled, "better than its own: they do not belong to their nodule",
        "worse than its own: they belong to their nodule", "like its own: nodule-blind"))
    for name in generated():
        row = rows.get(name) or {}
        if name == ref or row.get("status") != "ok":
            continue
        d = (row.get(f"vs_{ref}") or {}).get("diameter_mm")
        parts.append(f"{row_label(name)} is " + _verdict(
            d, f"closer than {row_label(ref)}", f"further than {row_label(ref)}",
            f"not separated from {row_label(ref)}"))
    return "; ".join(parts) + " (paired intervals that exclude 0)."


def section_known_futures(ctx: Context) -> str:
    """The known_futures block as a table with how it was measured and its reading."""
    block = ctx.metrics().get("known_futures")
    if not block:
        return missing_block("known_futures")
    if block.get("status") != "ok":
        return f"<p class=note>{esc(block.get('status'))}</p>"
    how = (f"Each test nodule has {block.get('reference_futures')} further one-year futures drawn "
           "by the simulator (same patient, nodule, label, scene and shape; growth, density "
           "change, misregistration and noise redrawn). Score per nodule: the energy distance "
           "between a row's follow-ups and those futures, 0 in expectation for follow-ups drawn "
           "from the futures' own distribution; lower is better. The ceiling scores "
           f"{block.get('held_out_futures')} held-out futures as a generator (its value is the "
           "score's own noise); rows with one follow-up per nodule are point forecasts. "
           "Intervals: paired bootstrap over nodules.")
    return (f"<p>{esc(how)}</p>" + known_futures_table(block)
            + f"<p><strong>Reading:</strong> {esc(reading(block))}</p>")
