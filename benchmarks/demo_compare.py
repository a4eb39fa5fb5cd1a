"""The demo before and after a change: Table 1, image quality, what the baseline buys, the
fidelity of the mean of K, the growth evidence, and the time each stage took, side by side.

Reads RUN/eval/metrics.json of both runs and, where present, RUN/pipeline.json (written by
`namd demo`: seconds per stage, wall time, load average) and RUN/samples/run_info.json (the
sampler). Writes a markdown and a JSON file.

    python benchmarks/demo_compare.py --before runs/demo_before --after runs/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import speed_line

HERE = Path(__file__).resolve().parent


def load(run: Path) -> dict:
    """What one run says about itself."""
    out = {"run": str(run), "metrics": json.loads((run / "eval" / "metrics.json").read_text())}
    for key, path in (("pipeline", run / "pipeline.json"), ("samples", run / "samples" / "run_info.json"),
                      ("vae", run / "vae" / "report.json"), ("vae_no_align", run / "vae_no_align" / "report.json")):
        out[key] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _measures(run: dict) -> dict:
    """The numbers issue 28 holds the demo to (None where the run lacks them)."""
    m, vae, abl = run["metrics"], run["vae"] or {}, run["vae_no_align"] or {}
    growth = (m.get("growth") or {}).get("generated", {}).get("namd", {})
    kf = (m.get("known_futures") or {}).get("rows", {}).get("namd", {})
    return {
        "vae_psnr": vae.get("recon_psnr"), "ablation_psnr": abl.get("recon_psnr"),
        "psnr_gap": (abl["recon_psnr"] - vae["recon_psnr"]) if vae and abl else None,
        "knn_r2": vae.get("knn_r2_diameter"), "spearman": vae.get("distance_spearman"),
        "ablation_spearman": abl.get("distance_spearman"),
        "baseline_use": (m.get("baseline_use") or {}).get("namd", {}).get("ratio"),
        "mean_of_k": (m.get("fidelity") or {}).get("namd", {}).get("mean_of_k_mae_to_vae_copy"),
        "growth_gap": growth.get("difference_mm"), "growth_ci": growth.get("difference_ci95"),
        **{f"kf_{k}": kf.get(f"energy_{k}") for k in ("diameter_mm", "density_hu", "image_hu")},
    }


def _f(value, fmt: str = ".3f") -> str:
    """A number, or a dash."""
    return "-" if value is None else format(value, fmt)


def _bar(m: dict, ref: dict | None) -> list[tuple[str, str, bool | None]]:
    """Issue 28's quality bar for one run: (criterion, value, met) per row; the known-future
    energies are judged against `ref` (the run before; None: not judged)."""
    def have(*keys: str) -> bool:
        return all(m[k] is not None for k in keys)

    def no_worse(key: str) -> bool | None:
        return None if ref is None or m[key] is None or ref[key] is None else m[key] <= ref[key]

    gap = ("-" if m["growth_ci"] is None else
           f"{m['growth_gap']:+.2f} [{m['growth_ci'][0]:+.2f}, {m['growth_ci'][1]:+.2f}]")
    return [
        ("NAMD VAE PSNR (dB) >= 24", _f(m["vae_psnr"], ".2f"), m["vae_psnr"] >= 24 if have("vae_psnr") else None),
        ("PSNR below the ablation's (dB) <= 1.5", _f(m["psnr_gap"], ".2f"),
         m["psnr_gap"] <= 1.5 if have("psnr_gap") else None),
        ("k-NN R^2 of the diameter >= 0.8", _f(m["knn_r2"]), m["knn_r2"] >= 0.8 if have("knn_r2") else None),
        ("distance Spearman above the ablation's", f"{_f(m['spearman'])} vs {_f(m['ablation_spearman'])}",
         m["spearman"] > m["ablation_spearman"] if have("spearman", "ablation_spearman") else None),
        ("shuffled-baseline loss ratio <= 0.3", _f(m["baseline_use"]),
         m["baseline_use"] <= 0.3 if have("baseline_use") else None),
        ("mean of K / VAE copy MAE <= 1.1", _f(m["mean_of_k"]), m["mean_of_k"] <= 1.1 if have("mean_of_k") else None),
        ("growth gap (mm), interval above 0", gap, m["growth_ci"][0] > 0 if m["growth_ci"] else None),
    ] + [(f"known-future energy, {k} (no worse than before)", _f(m[f"kf_{k}"]), no_worse(f"kf_{k}"))
         for k in ("diameter_mm", "density_hu", "image_hu")]


def _cell(value: str, met: bool | None) -> str:
    """A value, marked **no** where it misses the bar."""
    return value + ("" if met is None or met else " **no**")


def _wall(run: dict, base: float | None) -> str:
    """Wall minutes of a run and its ratio to `base` seconds (the run before)."""
    p = run["pipeline"]
    if not p:
        return "-"
    return f"{p['wall_seconds'] / 60:.1f} ({p['wall_seconds'] / base if base else 1.0:.2f}x)"


def criteria(before: dict, afters: list[dict]) -> list[str]:
    """Issue 28's quality bar and the wall time: the run before, then each run after (its value,
    and **no** where it misses the bar; the known-future energies against the run before)."""
    b = _measures(before)
    columns = [_bar(b, None)] + [_bar(_measures(a), b) for a in afters]
    base = (before["pipeline"] or {}).get("wall_seconds")
    head = "| criterion (issue 28) | before | " + " | ".join(Path(r["run"]).name for r in afters) + " |"
    lines = [head, "|---" * (2 + len(afters)) + "|",
             "| wall time (min), ratio to before <= 0.6 | "
             + " | ".join(_wall(r, base) for r in (before, *afters)) + " |"]
    for i, (name, _, _) in enumerate(columns[0]):
        lines.append(f"| {name} | " + " | ".join(_cell(*col[i][1:]) for col in columns) + " |")
    return lines


def table1(before: dict, after: dict) -> list[str]:
    """AUROC of the mean probability and mean AUROC over K per row, before and after."""
    rows_b = {r["name"]: r for r in before["metrics"]["rows"]}
    lines = ["| row | AUROC mean over K, before | after | mean-prob AUROC, before | after | "
             "DeLong p vs VAE copy, after |", "|---|---|---|---|---|---|"]
    for r in after["metrics"]["rows"]:
        b = rows_b.get(r["name"], {})

        def cell(row: dict) -> str:
            if row.get("status", "ok") != "ok":
                return "not run"
            return _f((row.get("auroc") or {}).get("mean"))

        p = (r.get("vs_vae_copy_baseline") or {}).get("p_value")
        lines.append(f"| {r['name']} | {cell(b) if b else 'not run'} | {cell(r)} | "
                     f"{_f(b.get('mean_prob_auroc'))} | {_f(r.get('mean_prob_auroc'))} | {_f(p)} |")
    return lines


def quality(before: dict, after: dict) -> list[str]:
    """Image quality, baseline use and fidelity per generated variant."""
    lines = ["| variant | MAE (HU) before / after | SSIM before / after | baseline-use ratio "
             "before / after | mean-of-K MAE / VAE copy before / after | nearest own before / after |",
             "|---|---|---|---|---|---|"]
    for name in after["metrics"].get("image_quality", {}):
        def get(m: dict, block: str, *keys, name: str = name):
            value = m["metrics"].get(block, {}).get(name)
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            return value

        pair = [(get(before, "image_quality", "mae_hu", "mean"), get(after, "image_quality", "mae_hu", "mean"), ".1f"),
                (get(before, "image_quality", "ssim", "mean"), get(after, "image_quality", "ssim", "mean"), ".3f"),
                (get(before, "baseline_use", "ratio"), get(after, "baseline_use", "ratio"), ".2f"),
                (get(before, "fidelity", "mean_of_k_mae_to_vae_copy"),
                 get(after, "fidelity", "mean_of_k_mae_to_vae_copy"), ".2f"),
                (get(before, "fidelity", "nearest_own_followup_share"),
                 get(after, "fidelity", "nearest_own_followup_share"), ".2f")]
        lines.append(f"| {name} | " + " | ".join(f"{_f(b, f)} / {_f(a, f)}" for b, a, f in pair) + " |")
    return lines


def growth(run: dict) -> list[str]:
    """The growth evidence of one run."""
    block = run["metrics"].get("growth")
    if not block:
        return [f"{run['run']}: no growth block (evaluated before it existed)."]
    lines = ["| | benign (mm) | malignant (mm) | malignant - benign [95% CI] |", "|---|---|---|---|"]
    entries = [("real follow-up", block["real_followup"])] + [
        (name, g) for name, g in block["generated"].items()]
    for name, g in entries:
        if g.get("status", "ok") != "ok":
            lines.append(f"| {name} | {g['status']} | | |")
            continue
        lo, hi = g["difference_ci95"]
        lines.append(f"| {name} | {g['benign_mean_mm']:+.2f} | {g['malignant_mean_mm']:+.2f} | "
                     f"{g['difference_mm']:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return lines


def timing(run: dict) -> str:
    """Wall time, stage seconds and load of a run, or why they are unknown."""
    p, s = run["pipeline"], run["samples"] or {}
    sampler = (s.get("config") or {}).get("sampling", {})
    head = f"sampler {sampler.get('scheduler')} {sampler.get('steps')} steps, K = {sampler.get('k')}"
    if not p:
        return f"{run['run']}: {head}; no RUN/pipeline.json (run before `namd demo` recorded it)."
    stages = ", ".join(f"{k} {v:.0f}" for k, v in p["stage_seconds"].items())
    others = p.get("other_cpus_during")
    load = (f"{p['busy_cpus_before']:.2f} CPUs busy at the start, {others:.2f} CPUs of other work on "
            "average during the run, " if others is not None else "")
    return (f"{run['run']}: {head}; `--jobs {p['jobs']}` on {p['cpus']} CPUs, methods "
            f"{','.join(p.get('methods') or ['namd', 'no_align', 'null_context'] if p.get('ablations', True) else ['namd'])}: **{p['wall_seconds'] / 60:.1f} min** wall, "
            f"{p['cpu_seconds'] / 60:.1f} min CPU; {load}load average {p['loadavg_before'][0]:.2f} "
            f"before, {p['loadavg_after'][0]:.2f} after.{speed_line(p)} Stage seconds: {stages}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True, help="the run compared in full")
    parser.add_argument("--also", nargs="*", default=[],
                        help="other runs after the change, shown beside it in the quality bar")
    parser.add_argument("--out", default=str(HERE / "results" / "demo"))
    args = parser.parse_args()
    before, after = load(Path(args.before)), load(Path(args.after))
    others = [load(Path(r)) for r in args.also]
    also = (" --also " + " ".join(args.also)) if args.also else ""
    text = "\n".join([
        "# The demo before and after", "",
        f"`python benchmarks/demo_compare.py --before {args.before} --after {args.after}{also}`", "",
        "## Time", "", "- before: " + timing(before), "- after: " + timing(after),
        *(f"- also: {timing(r)}" for r in others), "",
        "## The quality bar", "", *criteria(before, [after, *others]), "",
        f"## Table 1 (test split, {after['metrics']['n_test']} nodules, "
        f"{after['metrics']['n_malignant']} malignant)", "", *table1(before, after), "",
        "## Image quality, baseline use, fidelity", "", *quality(before, after), "",
        "## Growth: before", "", *growth(before), "", "## Growth: after", "", *growth(after), ""])
    from namd.run.provenance import atomic_write_json, atomic_write_text

    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_json(out.with_suffix(".json"), {"before": before, "after": after, "also": others})
    print(text)


if __name__ == "__main__":
    main()
