"""The report's section "Gap closure" from the `gap_closure` block of RUN/eval/metrics.json
(namd.evaluation.gap_closure): per generated variant the share of the AUROC gap between the
real baseline and the real follow-up that it closes, with its paired interval and the three
AUROCs, and one sentence reading NAMD's value beside the paper's 0.82.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from namd.evaluation.gap_closure import PAPER_CLOSURE
from namd.evaluation.report.html import esc
from namd.evaluation.report.inputs import missing_block
from namd.evaluation.rows import generated, listed, row_label

if TYPE_CHECKING:
    from namd.evaluation.report.inputs import Context


def _num(value: Any) -> str:
    """'0.823', '–' when absent."""
    return "–" if value is None else f"{value:.3f}"


def _closure(entry: dict[str, Any]) -> str:
    """'0.82 [0.41, 1.20]', or '–' when there is no ratio."""
    point, ci = entry.get("point"), entry.get("ci95")
    if point is None:
        return "–"
    return f"{point:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [no interval]")


def _cells(e: dict[str, Any]) -> str:
    """The six number cells of one gap-closure entry."""
    dropped = e.get("n_boot_denominator_nonpositive")
    cells = (_closure(e) if e.get("status") == "ok" else e.get("status"),
             _num(e.get("real_baseline_auroc")), _num(e.get("variant_auroc")),
             _num(e.get("real_followup_auroc")),
             "–" if e.get("mean_run_point") is None else f"{e['mean_run_point']:.2f}",
             "–" if dropped is None else f"{dropped} of {e.get('n_boot')}")
    return "".join(f"<td class=num>{esc(c)}</td>" for c in cells)


def gap_table(block: dict[str, Any]) -> str:
    """One row per generated variant: closure [CI], the three AUROCs, the secondary figure and
    the dropped bootstrap draws (variants not run say why)."""
    level = (block.get("bootstrap") or {}).get("level", 0.95)
    head = (f"<tr><th>Variant</th><th>gap closure [{level:.0%} CI, paired]</th>"
            "<th>AUROC real baseline</th><th>AUROC variant (mean prob. over K)</th>"
            "<th>AUROC real follow-up</th><th>closure of the mean AUROC over K</th>"
            "<th>draws dropped (denominator ≤ 0)</th></tr>")
    body = []
    for name in (n for n in generated() if listed(n, block.get("generated") or {})):
        e = (block.get("generated") or {}).get(name) or {"status": "not in metrics.json"}
        cls = ' class="namd"' if name == "namd" else ""
        label = f"{esc(row_label(name))}<br><span class=muted>{esc(name)}</span>"
        if "variant_auroc" not in e:
            body.append(f"<tr{cls}><td>{label}</td><td colspan=6 class=muted>"
                        f"{esc(e.get('status'))}</td></tr>")
            continue
        body.append(f"<tr{cls}><td>{label}</td>{_cells(e)}</tr>")
    for name, e in (block.get("reference") or {}).items():
        label = (f"{esc(row_label(name))}<br><span class=muted>{esc(name)}: reads the record, "
                 "no generated image</span>")
        body.append(f"<tr><td>{label}</td>{_cells(e)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def record_sentence(metrics: dict[str, Any]) -> str:
    """What the record adds, measured: NAMD against its null-context model (paired DeLong test on
    the mean probability; the share of the generated growth gap that nulling C removes) and the
    closure of the rows that read the record directly, read against issue 18's goals."""
    rows = {r.get("name"): r for r in metrics.get("rows") or []}
    test = (rows.get("null_context") or {}).get("vs_namd")
    growth = (metrics.get("growth") or {}).get("generated") or {}
    null_gap = (growth.get("null_context") or {}).get("vs_namd")
    namd_gap = (growth.get("namd") or {}).get("difference_mm")
    if not test or not null_gap or not namd_gap:
        return ("What the record adds is not measured in this run: it needs the null-context model "
                "(namd train cond --method null_context, namd sample --method null_context).")
    share = null_gap["gap_difference_mm"] / namd_gap
    lo, hi = null_gap["ci95"]
    text = (f"Without the record (the null-context model) the mean-probability AUROC changes by "
            f"{test['delta_auroc']:+.3f} (paired DeLong p = {test['p_value']:.2f}) and the generated "
            f"malignant - benign growth gap ({namd_gap:.2f} mm with the record) by "
            f"{-null_gap['gap_difference_mm']:+.2f} mm [{-hi:.2f}, {-lo:.2f}]: "
            + (f"{share:.0%} of it is the record's." if share >= 0 else
               f"the model without the record separates growth {-share:.0%} more."))
    refs = ((metrics.get("gap_closure") or {}).get("reference") or {})
    closed = [f"{row_label(n)} {e['point']:.2f}" for n, e in refs.items() if e.get("point") is not None]
    if closed:
        text += (" Read without any generated image, the record closes " + ", ".join(closed)
                 + " of the gap: the yardstick for what the record's information is worth here.")
    met = test["delta_auroc"] < 0 and test["p_value"] < 0.05 and share >= 0.3
    return text + (" The record steers these follow-ups measurably." if met else
                   " The record does not yet steer these follow-ups measurably (a steering record "
                   "would make the null-context model worse, p < 0.05, and remove at least 30% of "
                   "the growth gap).")


def gap_sentence(block: dict[str, Any]) -> str:
    """NAMD's gap closure and its interval, read against 0 and the paper's value."""
    paper = block.get("paper", PAPER_CLOSURE)
    namd = (block.get("generated") or {}).get("namd") or {"status": "absent"}
    if namd.get("status") != "ok":
        return (f"NAMD's gap closure is not available ({namd['status']}), so this run neither "
                f"supports nor contradicts the paper's {paper:.2f}.")
    point, ci = namd["point"], namd.get("ci95")
    text = (f"NAMD's generated follow-ups close {point:.2f} of the AUROC gap between the real "
            f"baseline ({namd['real_baseline_auroc']:.3f}) and the real follow-up "
            f"({namd['real_followup_auroc']:.3f})")
    if not ci:
        return (text + " (no bootstrap draw had a positive gap, so no interval); the paper "
                f"reports {paper:.2f}.")
    lo, hi = ci
    level = (block.get("bootstrap") or {}).get("level", 0.95)
    against_paper = "contains" if lo <= paper <= hi else "excludes"
    if lo > 0:
        against_zero = "excludes 0 (generation closes some of the gap)"
    elif hi < 0:
        against_zero = "lies below 0 (the generated follow-ups diagnose worse than the baseline)"
    else:
        against_zero = "contains 0 (no evidence that generation closes any of the gap)"
    return (text + f" ({level:.0%} CI {lo:.2f} to {hi:.2f}): the interval {against_paper} the "
            f"paper's {paper:.2f} and {against_zero}.")


def section_gap(ctx: Context) -> str:
    """The gap_closure block as a table with how it was measured and its reading."""
    block = ctx.metrics().get("gap_closure")
    if not block:
        return missing_block("gap_closure")
    boot = block.get("bootstrap") or {}
    how = ("Gap closure = (AUROC of the variant − AUROC of the real baseline) / (AUROC of the "
           "real follow-up − AUROC of the real baseline), with the variant scored by its mean "
           "probability over the K samples: 0 = no better than the baseline it started from, "
           "1 = as good as the real follow-up; above 1 is possible. Interval: percentile "
           f"bootstrap over nodules ({boot.get('n')} draws, within each label), each draw "
           "computing all three AUROCs on the same resampled nodules; draws in which the real "
           "follow-up does not beat the baseline are dropped and counted. The secondary column "
           "uses the AUROC averaged over the K runs instead (point only).")
    return (f"<p>{esc(how)}</p>" + gap_table(block)
            + f"<p><strong>Reading:</strong> {esc(gap_sentence(block))}</p>"
            + f"<p><strong>What the record adds:</strong> {esc(record_sentence(ctx.metrics()))}</p>")
