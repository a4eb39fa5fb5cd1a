"""The comparison table of `namd evaluate` as text (what the command prints), and which of its
generated rows were sampled with another K than the reference method (their mean +- std over K
and mean-of-K probability are then not comparable with its)."""

from __future__ import annotations

from namd.config import methods
from namd.evaluation.rows import generated


def k_differs(result: dict) -> dict[str, int]:
    """Generated rows that ran with another K than the table's (metrics.json "k": the reference
    method's K, or sampling.k when it did not run): row name -> its K. A deterministic method
    draws one follow-up by design (Method.stochastic), which is not a difference."""
    reference = result.get("k")
    return {row["name"]: row["k"] for row in result.get("rows", [])
            if row.get("name") in generated() and methods.get(row["name"]).stochastic
            and row.get("status") == "ok"
            and row.get("k") is not None and row.get("k") != reference}


def k_note(result: dict) -> str:
    """One line saying which rows ran with another K than the table's, '' when none."""
    differs = k_differs(result)
    if not differs:
        return ""
    rows = ", ".join(f"{name} K = {k}" for name, k in differs.items())
    return (f"* K differs from the table's K = {result.get('k')}: {rows}; their mean +- std over "
            "K and mean-of-K scores are not comparable with the other rows' (sample them with "
            "the same --k)")


def format_table(result: dict) -> str:
    """The comparison table as text (the paper's Table 1, as far as this run goes); rows sampled
    with another K than the table's are marked * and named below it."""
    differs = k_differs(result)
    lines = [f"namd evaluate: split {result['split']}, {result['n_test']} nodules "
             f"({result['n_malignant']} malignant), K = {result['k']}",
             f"{'row':<19} {'k':>3}  {'AUROC mean+-std [95% CI]':<29} {'AUPRC mean+-std [95% CI]':<29}"
             f" {'dAUROC vs base (p)':<20} {'SSIM':>6} {'FD-eval':>8} {'KF-diam':>8}"]
    futures = result.get("known_futures") or {}
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"{row['name']:<19} {'-':>3}  {row['status']}")
            continue
        cells = [_metric_cell(row["auroc"]), _metric_cell(row["auprc"])]
        vs = row.get("vs_real_baseline")
        test = f"{vs['delta_auroc']:+.3f} (p={vs['p_value']:.3g})" if vs else ""
        iq = result["image_quality"].get(row["name"], {})
        ssim = f"{iq['ssim']['mean']:.3f}" if iq.get("status") == "ok" else ""
        fd = f"{iq['frechet_evaluator']:.3g}" if iq.get("status") == "ok" else ""
        k = f"{row['k']}*" if row["name"] in differs else str(row["k"])
        kf = ((futures.get("rows") or {}).get(row["name"]) or {}).get("energy_diameter_mm")
        kf = f"{kf:.3f}" if isinstance(kf, int | float) else ""
        lines.append(f"{row['name']:<19} {k:>3}  {cells[0]:<29} {cells[1]:<29} {test:<20} "
                     f"{ssim:>6} {fd:>8} {kf:>8}")
    note = k_note(result)
    kf_note = ("KF-diam: energy distance of the nodule's diameter to its known futures (mm; 0 = "
               "drawn like them)" if futures.get("status") == "ok"
               else f"KF-diam: known futures {futures.get('status', 'not in metrics.json')}")
    return "\n".join([*lines, kf_note, *([note] if note else [])])


def _metric_cell(block: dict) -> str:
    """'0.805+-0.018 [0.741, 0.861]' (None-safe)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lo, hi = block["ci95"]
    return f"{f(block['mean'])}+-{f(block['std'])} [{f(lo)}, {f(hi)}]"
