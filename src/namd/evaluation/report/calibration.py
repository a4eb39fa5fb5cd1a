"""The report's section "Calibration" from the `calibration` block of RUN/eval/metrics.json
(namd.evaluation.calibration_metrics): a reliability diagram of the real baseline, real
follow-up and NAMD rows (raw and calibrated), and a table of Brier score and ECE per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from namd.evaluation.report.figures import row_colour
from namd.evaluation.report.html import esc
from namd.evaluation.report.inputs import missing_block
from namd.evaluation.rows import row_label

if TYPE_CHECKING:
    from namd.evaluation.report.inputs import Context

DIAGRAM_ROWS = ("real_baseline", "real_followup", "namd")


def _num(value: Any) -> str:
    """'0.123', '–' when absent."""
    return "–" if value is None else f"{value:.3f}"


def reliability_figure(rows: dict[str, Any]) -> Figure:
    """One panel per row of DIAGRAM_ROWS: fraction malignant against mean probability per bin,
    raw (dashed) and calibrated (solid), marker area by the bin's count; a row that did not run
    says so in its panel."""
    fig = Figure(figsize=(4.2 * len(DIAGRAM_ROWS), 4.6), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(DIAGRAM_ROWS), squeeze=False)[0], DIAGRAM_ROWS,
                        strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="perfectly calibrated")
        entry = rows.get(name) or {"status": "not in metrics.json"}
        if entry.get("status") != "ok":
            ax.text(0.5, 0.5, str(entry["status"])[:60], ha="center", va="center", wrap=True,
                    fontsize=8, color="0.4")
        for kind, ls in (("raw", "--"), ("calibrated", "-")):
            points = (entry.get(kind) or {}).get("reliability") or []
            if not points:
                continue
            x, y = [p["mean_prob"] for p in points], [p["frac_pos"] for p in points]
            ax.plot(x, y, ls=ls, color=row_colour(name), alpha=1.0 if kind == "calibrated" else 0.6,
                    label=f"{kind} (ECE {entry[kind]['ece']:.3f})")
            ax.scatter(x, y, s=[12 + 4 * p["n"] for p in points], color=row_colour(name),
                       alpha=0.5, edgecolors="none")
        ax.set(title=row_label(name), xlabel="mean predicted probability (bin)",
               ylabel="fraction malignant", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    return fig


def calibration_table(rows: dict[str, Any]) -> str:
    """Brier and ECE of every image row, raw beside calibrated (not-run rows say why)."""
    head = ("<tr><th>Row</th><th>Brier raw</th><th>Brier calibrated</th><th>ECE raw</th>"
            "<th>ECE calibrated</th></tr>")
    body = []
    for name, r in rows.items():
        label = f"{esc(row_label(name))}<br><span class=muted>{esc(name)}</span>"
        if r.get("status", "ok") != "ok":
            body.append(f"<tr><td>{label}</td><td colspan=4 class=muted>{esc(r['status'])}"
                        "</td></tr>")
            continue
        raw, cal = r.get("raw") or {}, r.get("calibrated") or {}
        cells = (raw.get("brier"), cal.get("brier"), raw.get("ece"), cal.get("ece"))
        body.append(f"<tr><td>{label}</td>"
                    + "".join(f"<td class=num>{esc(_num(c))}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _how(block: dict[str, Any], probability: str) -> str:
    """How the probability was calibrated, in one paragraph."""
    if block.get("method") == "platt":
        fit = (f"Platt scaling, p = sigmoid({block['slope']:.3f} logit(p_raw) "
               f"{block['intercept']:+.3f}), fitted on {block.get('n')} labelled validation "
               f"crops ({block.get('n_pos')} malignant); {block.get('note', '')}.")
    else:
        fit = f"No calibration: {block.get('status', 'none')}."
    return (f"The table's probabilities are {probability}. {fit} The map is monotonic: each "
            "run's AUROC and AUPRC are unchanged; the mean over K, Brier score and ECE "
            f"({block.get('bins', 10)} equal-width bins) change. Measured on {block.get('of')}.")


def section_calibration(ctx: Context) -> str:
    """The calibration block as a reliability diagram and a Brier / ECE table."""
    m = ctx.metrics()
    block = m.get("calibration")
    if not block:
        return missing_block("calibration")
    rows = block.get("rows") or {}
    body = f"<p>{esc(_how(block, m.get('probability', 'raw')))}</p>"
    body += ctx.figure("calibration_reliability.png", reliability_figure(rows),
                       "Reliability diagram: per probability bin, the fraction of malignant "
                       "nodules against the mean predicted probability (dashed: raw evaluator "
                       "output; solid: calibrated; marker area: nodules in the bin).")
    return body + calibration_table(rows)
