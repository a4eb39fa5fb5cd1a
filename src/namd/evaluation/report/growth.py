"""The report's section "Growth: does the generator predict change?" from the `growth` block of
RUN/eval/metrics.json (namd.evaluation.growth): per row the mean growth of benign and of
malignant nodules, their difference with its interval, and one sentence reading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from namd.evaluation.report.html import esc
from namd.evaluation.report.inputs import missing_block
from namd.evaluation.rows import generated, listed, row_label

if TYPE_CHECKING:
    from namd.evaluation.report.inputs import Context


def _mm(value: Any) -> str:
    """'+1.23' (signed mm), '–' when absent."""
    return "–" if value is None else f"{value:+.2f}"


def with_ci(value: Any, ci: Any) -> str:
    """'+1.23 [+0.40, +2.05]'."""
    if value is None:
        return "–"
    return _mm(value) + (f" [{_mm(ci[0])}, {_mm(ci[1])}]" if ci else "")


def growth_table(block: dict[str, Any]) -> str:
    """One row for the real follow-up and one per generated variant (not-run ones say why)."""
    level = (block.get("bootstrap") or {}).get("level", 0.95)
    head = ("<tr><th>Row</th><th>benign mean growth (mm)</th><th>malignant mean growth (mm)</th>"
            f"<th>malignant − benign (mm) [{level:.0%} CI]</th>"
            f"<th>NAMD's difference − this one (mm) [{level:.0%} CI, paired]</th>"
            "<th>benign: generated − real (mm)</th></tr>")
    rows = [("real_followup", block.get("real_followup") or {})]
    rows += [(name, block.get("generated", {}).get(name) or {"status": "not in metrics.json"})
             for name in generated() if listed(name, block.get("generated", {}))]
    body = []
    for name, r in rows:
        cls = ' class="namd"' if name == "namd" else ""
        label = f"{esc(row_label(name))}<br><span class=muted>{esc(name)}</span>"
        if r.get("status", "ok") != "ok":
            body.append(f"<tr{cls}><td>{label}</td><td colspan=5 class=muted>{esc(r['status'])}"
                        "</td></tr>")
            continue
        vs = r.get("vs_namd") or {}
        cells = (_mm(r.get("benign_mean_mm")), _mm(r.get("malignant_mean_mm")),
                 with_ci(r.get("difference_mm"), r.get("difference_ci95")),
                 with_ci(vs.get("gap_difference_mm"), vs.get("ci95")),
                 _mm(r.get("benign_minus_real_benign_mm")))
        body.append(f"<tr{cls}><td>{label}</td>"
                    + "".join(f"<td class=num>{esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def growth_sentence(block: dict[str, Any]) -> str:
    """Whether NAMD's malignant follow-ups grow more than its benign ones, beside the real gap."""
    namd = (block.get("generated") or {}).get("namd") or {"status": "absent"}
    if namd.get("status") != "ok":
        return (f"NAMD was not measured ({namd['status']}), so this run does not say whether the "
                "generator predicts change.")
    level = (block.get("bootstrap") or {}).get("level", 0.95)
    d, (lo, hi) = namd["difference_mm"], namd["difference_ci95"]
    real = block["real_followup"]["difference_mm"]
    if lo > 0:
        verdict = "the generator predicts more growth for malignant nodules"
    elif hi < 0:
        verdict = "the generator predicts more growth for benign nodules, the wrong way round"
    else:
        verdict = ("the interval contains 0, so there is no evidence that the generator "
                   "predicts a change that depends on the label")
    return (f"NAMD's malignant − benign growth difference is {d:+.2f} mm ({level:.0%} CI "
            f"{lo:+.2f} to {hi:+.2f} mm; real follow-ups: {real:+.2f} mm): {verdict}.")


def section_growth(ctx: Context) -> str:
    """The growth block as a table with how it was measured and its reading."""
    block = ctx.metrics().get("growth")
    if not block:
        return missing_block("growth")
    how = (f"Size: {block.get('size', 'the central equivalent diameter')}. Growth of a real "
           "follow-up: its size minus the baseline's; of a generated one: the mean size over its "
           "K samples minus the size of the baseline passed through that variant's VAE (the "
           "same blur). Intervals: bootstrap over nodules; the paired column resamples the same "
           "nodules for NAMD and the ablation.")
    return (f"<p>{esc(how)}</p>" + growth_table(block)
            + f"<p><strong>Reading:</strong> {esc(growth_sentence(block))}</p>")
