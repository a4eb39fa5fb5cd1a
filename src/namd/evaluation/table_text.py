"""The comparison table of `namd evaluate` as text (what the command prints)."""

from __future__ import annotations


def format_table(result: dict) -> str:
    """The comparison table as text (the paper's Table 1, as far as this run goes)."""
    lines = [f"namd evaluate: split {result['split']}, {result['n_test']} nodules "
             f"({result['n_malignant']} malignant), K = {result['k']}",
             f"{'row':<19} {'k':>3}  {'AUROC mean+-std [95% CI]':<29} {'AUPRC mean+-std [95% CI]':<29}"
             f" {'dAUROC vs base (p)':<20} {'SSIM':>6} {'FD-eval':>8}"]
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
        lines.append(f"{row['name']:<19} {row['k']:>3}  {cells[0]:<29} {cells[1]:<29} {test:<20} "
                     f"{ssim:>6} {fd:>8}")
    return "\n".join(lines)


def _metric_cell(block: dict) -> str:
    """'0.805+-0.018 [0.741, 0.861]' (None-safe)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lo, hi = block["ci95"]
    return f"{f(block['mean'])}+-{f(block['std'])} [{f(lo)}, {f(hi)}]"
