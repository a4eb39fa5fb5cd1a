"""Speed and agreement of the one nodule measurer (`namd.evaluation.measure`) against the
per-crop measure it replaced (`quality.nodule_diameter_mm` as of commit BEFORE), and of the
growth section's size against the recorded diameters of a synthetic cohort.

    python benchmarks/bench_measure.py --cohort RUN/cohort [--samples RUN/samples/samples.npy]

- ms per crop, before and after, best of --repeat runs, on the cohort's real crops (every
  pair's baseline and follow-up) and, with --samples, on generated crops (its first --nodules
  nodules, all K samples): the demo measures ~40,000 crops;
- the largest |before - after| of the longest diameter, and how many crops differ by > 0.1 mm;
- the growth size: the former central size (tissue above -400 HU within 10 mm, growth.py as of
  BEFORE) and the measurer's longest and equivalent diameters, against the cohort's recorded
  SCT_LONG_DIA (baseline, follow-up) and recorded growth (their difference), and the
  malignant - benign growth gap each gives.

The "before" code is read from git (`git show BEFORE:src/namd/evaluation/...`), so the numbers
compare the two implementations as they were, on the same machine and crops.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import load_line, machine, publish, start_load

HERE = Path(__file__).resolve().parent
BEFORE = "dae7b23"  # the last commit with quality.nodule_diameter_mm and growth.central_diameter_mm


def old_module(name: str, commit: str):
    """src/namd/evaluation/<name>.py as of `commit`, imported under another name."""
    text = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{commit}:src/namd/evaluation/{name}.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"before_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"before_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def best_ms(fn, crops: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """Best wall time per crop (ms) over `repeat` runs, and the last result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(crops)
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times) / len(crops), out


def speed(sets: dict[str, tuple[np.ndarray, np.ndarray]], old, repeat: int) -> dict:
    """Before / after timing and agreement per set of crops (crops (n, H, W), spacing (n,))."""
    from namd.evaluation.measure import measure

    out = {}
    for name, (crops, spacing) in sets.items():
        before, old_d = best_ms(lambda c: old.diameters_mm(c, spacing), crops, repeat)  # noqa: B023
        after, new = best_ms(lambda c: measure(c, spacing), crops, repeat)  # noqa: B023
        diff = np.abs(old_d - new.longest_mm)
        out[name] = {"crops": int(len(crops)), "before_ms": before, "after_ms": after,
                     "speedup": before / after, "max_abs_diff_mm": float(diff.max()),
                     "over_0.1mm": int((diff > 0.1).sum()), "no_nodule_share": float((~new.found).mean())}
    return out


def agreement(measured: np.ndarray, recorded: np.ndarray) -> dict:
    """MAE, correlation (Pearson, Spearman) and the 99th percentile error, finite records."""
    from scipy.stats import spearmanr

    ok = np.isfinite(recorded)
    err = np.abs(measured[ok] - recorded[ok])
    return {"mae_mm": float(err.mean()), "r": float(np.corrcoef(measured[ok], recorded[ok])[0, 1]),
            "spearman": float(spearmanr(measured[ok], recorded[ok])[0]),
            "p99_error_mm": float(np.percentile(err, 99)), "over_3mm": int((err > 3).sum())}


def gap(growth: np.ndarray, label: np.ndarray) -> dict:
    """Malignant - benign mean growth, its standard error and their ratio."""
    mal, ben = growth[label == 1], growth[label == 0]
    diff = mal.mean() - ben.mean()
    se = np.sqrt(mal.var() / len(mal) + ben.var() / len(ben))
    return {"gap_mm": float(diff), "se_mm": float(se), "z": float(diff / se),
            "benign_sd_mm": float(ben.std())}


def growth_sizes(cohort_dir: str, old_growth) -> dict:
    """The three sizes against the recorded diameters and growth of every pair."""
    from namd.cohort.store import Cohort
    from namd.evaluation.measure import measure

    cohort = Cohort(cohort_dir)
    pairs = cohort.pairs()
    spacing = pairs["pixel_spacing_mm"].to_numpy(float)
    label = pairs["label"].to_numpy(float)
    crops = [cohort.images(pairs[f"{k}_index"].to_numpy()) for k in ("baseline", "followup")]
    recorded = [pairs[c].to_numpy(float) for c in ("SCT_LONG_DIA", "followup_SCT_LONG_DIA")]
    both = np.isfinite(recorded[0]) & np.isfinite(recorded[1])
    new = [measure(c, spacing) for c in crops]
    sizes = {"central (before)": [old_growth.central_diameter_mm(c, spacing, -400.0, 10.0) for c in crops],
             "longest": [m.longest_mm for m in new], "equivalent (growth, after)": [m.equivalent_mm for m in new]}
    record_gap = gap((recorded[1] - recorded[0])[both], label[both])
    kinds = pairs["SCT_PRE_ATT"].to_numpy(float)
    out = {"pairs": int(len(pairs)), "with_both_records": int(both.sum()), "recorded_growth": record_gap}
    for name, (base, follow) in sizes.items():
        out[name] = {"baseline": agreement(base, recorded[0]), "followup": agreement(follow, recorded[1]),
                     "growth": agreement((follow - base)[both], (recorded[1] - recorded[0])[both]),
                     "label_gap": gap((follow - base)[label >= 0], label[label >= 0]),
                     "growth_r_by_type": {
                         f"SCT_PRE_ATT={k:g}": float(np.corrcoef((follow - base)[sel], (recorded[1] - recorded[0])[sel])[0, 1])
                         for k in np.unique(kinds[np.isfinite(kinds)]) if (sel := both & (kinds == k)).sum() >= 5}}
    return out


def markdown(record: dict) -> str:
    """Speed table, agreement, growth-size table."""
    lines = ["# The one nodule measurer: speed, agreement, growth size", "", f"`{record['command']}`", "",
             f"Before: `quality.nodule_diameter_mm` / `growth.central_diameter_mm` at commit "
             f"{record['before']} (read from git); after: `namd.evaluation.measure.measure`. "
             f"Machine {record['machine']['platform']}. {load_line(record['machine'])}", "",
             "| crops | n | before (ms/crop) | after (ms/crop) | speed-up | max abs diff (mm) | > 0.1 mm | no nodule |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in record["speed"].items():
        lines.append(f"| {name} | {s['crops']} | {s['before_ms']:.2f} | {s['after_ms']:.2f} | "
                     f"{s['speedup']:.1f}x | {s['max_abs_diff_mm']:.1e} | {s['over_0.1mm']} | "
                     f"{100 * s['no_nodule_share']:.1f}% |")
    g = record["growth"]
    rg = g["recorded_growth"]
    lines += ["", f"## Growth size against the recorded diameters ({g['pairs']} pairs, "
              f"{g['with_both_records']} with both recorded)", "",
              f"Recorded growth: malignant - benign gap {rg['gap_mm']:.2f} mm (z {rg['z']:.1f}).", "",
              "| size | baseline MAE / r | follow-up MAE / r | growth MAE / r / Spearman | growth error p99 (mm) | growth errors > 3 mm | label gap (mm) [z] | benign growth sd (mm) |",
              "|---|---|---|---|---:|---:|---|---:|"]
    for name in ("central (before)", "longest", "equivalent (growth, after)"):
        s = g[name]
        b, f, gr, lg = s["baseline"], s["followup"], s["growth"], s["label_gap"]
        lines.append(f"| {name} | {b['mae_mm']:.2f} / {b['r']:.3f} | {f['mae_mm']:.2f} / {f['r']:.3f} | "
                     f"{gr['mae_mm']:.2f} / {gr['r']:.3f} / {gr['spearman']:.3f} | {gr['p99_error_mm']:.1f} | "
                     f"{gr['over_3mm']} | {lg['gap_mm']:.2f} [{lg['z']:.1f}] | {lg['benign_sd_mm']:.2f} |")
    lines += ["", "Growth r by nodule type (1 solid, 2 ground glass, 3 part-solid): " + "; ".join(
        f"{name}: " + ", ".join(f"{k.split('=')[1]} {v:.3f}" for k, v in g[name]["growth_r_by_type"].items())
        for name in ("central (before)", "longest", "equivalent (growth, after)")) + "."]
    lines += ["", "MAE against the recorded longest diameter: an equivalent diameter is smaller "
              "for elongated nodules, so compare correlations across sizes, MAE within one."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, measure, publish."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--samples", help="a samples.npy (N, K, H, W) of generated crops")
    parser.add_argument("--nodules", type=int, default=40, help="nodules of --samples timed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--out", default=str(HERE / "results" / "measure"))
    args = parser.parse_args()
    from namd.cohort.store import Cohort

    old_quality, old_growth = old_module("quality", args.before), old_module("growth", args.before)
    cohort = Cohort(args.cohort)
    pairs = cohort.pairs()
    spacing = pairs["pixel_spacing_mm"].to_numpy(float)
    real = np.concatenate([cohort.images(pairs[f"{k}_index"].to_numpy()) for k in ("baseline", "followup")])
    sets = {"real crops (cohort)": (real, np.concatenate([spacing, spacing]))}
    if args.samples:
        gen = np.asarray(np.load(args.samples, mmap_mode="r")[:args.nodules], dtype=np.float32)
        sets["generated crops (samples)"] = (gen.reshape(-1, *gen.shape[2:]),
                                             np.full(gen.shape[0] * gen.shape[1], float(spacing[0])))
    before = start_load()
    record = {"before": args.before, "cohort": args.cohort, "samples": args.samples,
              "speed": speed(sets, old_quality, args.repeat), "growth": growth_sizes(args.cohort, old_growth)}
    record["machine"] = machine(before)
    record["command"] = ("python benchmarks/bench_measure.py --cohort " + args.cohort
                         + (f" --samples {args.samples} --nodules {args.nodules}" if args.samples else "")
                         + f" --repeat {args.repeat}")
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
