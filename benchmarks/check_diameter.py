"""How well `namd.evaluation.measure` measures nodules: the measured longest diameter of
real crops against the longest diameter their EHR records (synthetic cohort: the diameter the
nodule was drawn with), for baselines and follow-ups, overall and by nodule type.

    python benchmarks/check_diameter.py --cohort RUN/cohort [--n 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _results import load_line, machine, publish, start_load

HERE = Path(__file__).resolve().parent
TIMEPOINTS = (("baseline", "baseline_index", "SCT_LONG_DIA"),
              ("followup", "followup_index", "followup_SCT_LONG_DIA"))


def errors(measured: np.ndarray, recorded: np.ndarray) -> dict:
    """Agreement numbers of measured against recorded diameters (finite records only)."""
    ok = np.isfinite(recorded)
    err = measured[ok] - recorded[ok]
    return {"n": int(ok.sum()), "mae_mm": float(np.abs(err).mean()), "median_error_mm": float(np.median(err)),
            "share_over_5mm": float((np.abs(err) > 5).mean()), "share_over_2mm": float((np.abs(err) > 2).mean()),
            "correlation": float(np.corrcoef(measured[ok], recorded[ok])[0, 1])}


def run(cohort_dir: str, n: int, seed: int) -> dict:
    """Measure a random sample of the cohort's pairs."""
    from namd.cohort.store import Cohort
    from namd.evaluation.measure import measure

    cohort = Cohort(cohort_dir)
    pairs = cohort.pairs()
    pairs = pairs.sample(min(n, len(pairs)), random_state=seed)
    spacing = pairs["pixel_spacing_mm"].to_numpy(float)
    kinds = np.array([str(v) for v in pairs["SCT_PRE_ATT"]])
    out = {}
    for name, index, field in TIMEPOINTS:
        measured = measure(cohort.images(pairs[index].to_numpy()), spacing).longest_mm
        recorded = pairs[field].to_numpy(float)
        out[name] = {"all": errors(measured, recorded),
                     **{f"SCT_PRE_ATT={k}": errors(measured[kinds == k], recorded[kinds == k])
                        for k in sorted(set(kinds)) if (kinds == k).sum() >= 5}}
    return {"cohort": str(cohort_dir), "pairs": len(pairs), "seed": seed, "results": out}


def markdown(record: dict) -> str:
    """One table per time point."""
    mach = record["machine"]
    lines = ["# Nodule diameter measure against the recorded diameter", "", f"`{record['command']}`", "",
             f"{record['pairs']} pairs of `{record['cohort']}`; machine {mach['platform']}. "
             f"{load_line(mach)}", ""]
    for name, groups in record["results"].items():
        lines += [f"## {name}", "", "| group | n | MAE (mm) | median error (mm) | > 5 mm | > 2 mm | r |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {g} | {e['n']} | {e['mae_mm']:.2f} | {e['median_error_mm']:.2f} | "
                  f"{100 * e['share_over_5mm']:.1f}% | {100 * e['share_over_2mm']:.1f}% | {e['correlation']:.3f} |"
                  for g, e in groups.items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, publish."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "diameter"))
    args = parser.parse_args()
    before = start_load()
    record = run(args.cohort, args.n, args.seed)
    record["machine"] = machine(before)
    record["command"] = f"python benchmarks/check_diameter.py --cohort {args.cohort} --n {args.n}"
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
