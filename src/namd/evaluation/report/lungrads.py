"""The report's section "What a radiologist reads": per row (the baseline's copy, the known
futures when the cohort has them, every method sampled in the run, the real follow-up) the
Lung-RADS readout of its K follow-ups on the test pairs, scored against what happened
(namd.clinical.rows): weighted kappa of the most likely follow-up category, AUROC and Brier of
P(growth > 1.5 mm) and of P(4A or higher), Brock's AUROC beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from namd.clinical import READOUT_NOTICE
from namd.clinical.rows import BASELINE_COPY, KNOWN_FUTURES, REAL_FOLLOWUP
from namd.config import methods
from namd.evaluation.report.html import esc

if TYPE_CHECKING:
    from namd.evaluation.report.inputs import Context

TITLE = "What a radiologist reads: Lung-RADS, growth and doubling time against what happened"
LABELS = {BASELINE_COPY: "copy of the baseline (no change)",
          KNOWN_FUTURES: "known futures (the synthetic generator's own)",
          REAL_FOLLOWUP: "real follow-up (through the measurement error: the ceiling)"}
HEAD = ("<tr><th>Row</th><th>K</th><th>pairs</th><th>samples not measurable</th>"
        "<th>weighted kappa (linear)</th><th>exact category</th>"
        "<th>P(growth &gt; 1.5 mm): AUROC</th><th>Brier</th><th>recorded growth: AUROC</th>"
        "<th>P(≥ 4A): AUROC</th><th>Brier</th><th>Brock AUROC (growth / ≥ 4A)</th></tr>")


def _f(value: Any) -> str:
    """Three decimals, – when absent or NaN."""
    return "–" if value is None or value != value else f"{value:.3f}"


def _row(name: str, s: dict[str, Any]) -> str:
    """One table row."""
    label = LABELS.get(name) or methods.get(name).label
    cls = ' class="namd"' if name == methods.REFERENCE else ""
    head = f"<tr{cls}><td>{esc(label)}<br><span class=muted>{esc(name)}</span></td>"
    if s.get("status") != "ok":
        return head + f"<td colspan=11 class=muted>{esc(s.get('status', 'not scored'))}</td></tr>"
    g, h, rec, b = s["growth"], s["at_least_4a"], s.get("growth_recorded", {}), s.get("brock", {})
    cells = (str(s["k"]), str(s["n"]), f"{s['not_measurable_share']:.1%}", _f(s["kappa_linear"]),
             f"{s['exact_agreement']:.0%}", _f(g["auroc"]), _f(g["brier"]), _f(rec.get("auroc")),
             _f(h["auroc"]), _f(h["brier"]),
             f"{_f(b.get('auroc_growth'))} / {_f(b.get('auroc_at_least_4a'))}")
    return head + "".join(f"<td class=num>{esc(c)}</td>" for c in cells) + "</tr>"


def reliability_table(scores: dict[str, dict[str, Any]]) -> str:
    """The reliability points of P(growth > 1.5 mm) and P(4A or higher) per row: per
    equal-width bin holding pairs, mean predicted -> observed share (pairs)."""
    def cells(points: list[dict[str, Any]]) -> str:
        return "; ".join(f"{p['mean_prob']:.2f} → {p['frac_pos']:.2f} ({p['n']})" for p in points)

    body = "".join(
        f"<tr><td>{esc(LABELS.get(name) or methods.get(name).label)}</td>"
        f"<td>{esc(cells(s['growth']['reliability']))}</td>"
        f"<td>{esc(cells(s['at_least_4a']['reliability']))}</td></tr>"
        for name, s in scores.items() if s.get("status") == "ok")
    return ("<table><tr><th>Row</th><th>reliability of P(growth &gt; 1.5 mm): predicted → "
            "observed (pairs)</th><th>reliability of P(≥ 4A)</th></tr>" + body + "</table>")


def reliability_figure(scores: dict[str, dict[str, Any]]) -> Figure:
    """Reliability diagrams of P(growth > 1.5 mm) and P(4A or higher): per row its binned mean
    predicted probability against the observed share, the diagonal being perfect calibration."""
    fig = Figure(figsize=(10, 5.4), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = colormaps["tab20"]  # one colour per row: the table has more rows than tab10
    for ax, key, title in ((axes[0], "growth", "P(growth > 1.5 mm)"),
                           (axes[1], "at_least_4a", "P(4A or higher)")):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for i, (name, s) in enumerate(scores.items()):
            points = s.get(key, {}).get("reliability") if s.get("status") == "ok" else None
            if points:
                ax.plot([p["mean_prob"] for p in points], [p["frac_pos"] for p in points],
                        marker="o", ms=3, lw=2.0 if name == methods.REFERENCE else 0.9,
                        color=colours(i % 20), label=LABELS.get(name) or methods.get(name).label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability (bin)",
               ylabel="observed share", title=title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    return fig


def section_lungrads(ctx: Context) -> str:
    """The per-row readout table with how it was made, from metrics.json's `readout` block
    (namd evaluate scores it from the crops it measured once)."""
    return lungrads_html(ctx.metrics(("readout",))["readout"], ctx)


def lungrads_html(block: dict[str, Any], ctx: Context) -> str:
    """The section's body from a `readout` block (namd.clinical.rows.readout_block)."""
    scores = block["rows"]
    ctx.facts["lungrads"] = scores
    intro = (f"{block['n']} test pairs. Each row's K follow-ups of a nodule are measured by the "
             f"project's one measurer and read by Lung-RADS v{block['version']} (namd.clinical; "
             f"{block['draws']} drawn measurement errors per sample); what happened is the real "
             "follow-up crop against the real baseline, measured the same way (recorded growth: "
             "the cohort's recorded diameters). Kappa and the exact share compare the most likely "
             "follow-up category with the real one; the AUROCs and Brier scores score "
             "P(growth > 1.5 mm) and P(4A or higher); Brock's AUROC (record only) on the same pairs "
             "is beside them. docs/readout.md says how each number is made.")
    body = "".join(_row(name, s) for name, s in scores.items())
    diagram = ctx.figure("readout_reliability.png", reliability_figure(scores),
                         "Reliability of the readout's probabilities against what happened, per "
                         "row (the dashed diagonal: perfectly calibrated).")
    return (f"<p>{esc(intro)}</p><table>{HEAD}{body}</table>{diagram}{reliability_table(scores)}"
            f"<p class=muted>{esc(READOUT_NOTICE)}</p>")
