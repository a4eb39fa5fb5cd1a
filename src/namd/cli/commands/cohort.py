"""`namd cohort info DIR`: what a cohort holds, and proof that no patient crosses splits."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd cohort ...`."""
    parser = sub.add_parser("cohort", help="inspect a cohort", description=__doc__)
    inner = parser.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)
    info = inner.add_parser("info", help="counts, missingness, image statistics, split check")
    info.add_argument("dir", help="cohort directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Print the cohort summary; exit 1 when a patient crosses splits."""
    from namd.cohort.store import Cohort

    summary = Cohort(args.dir).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 1 if summary["split_leaks"] else 0


def format_summary(s: dict) -> str:
    """Human-readable cohort summary."""
    meta = s["meta"]
    lines = [f"cohort {s['path']}  (source: {meta.get('source')}, units: {meta.get('units')}, "
             f"crop {meta['crop_size']}x{meta['crop_size']} at {meta['pixel_spacing_mm']} mm)",
             f"crops {s['n_crops']}, patients {s['n_patients']}, pairs {s['n_pairs']}", "",
             "split/kind/label               crops"]
    lines += [f"  {k:<28} {v:>6}" for k, v in s["counts"].items()]
    lines += ["", "missing EHR values (fraction of crops)"]
    lines += [f"  {k:<14} {v:6.1%}" for k, v in s["missing_fraction"].items()]
    st = s["image_stats"]
    lines += ["", f"images ({st['sampled']} sampled, {st['units']}): min {st['min']:.0f}, "
              f"max {st['max']:.0f}, mean {st['mean']:.1f}, std {st['std']:.1f}" if st["sampled"] else "images: none"]
    leaks = s["split_leaks"]
    lines.append("split check: OK, no patient appears in more than one split" if not leaks
                 else f"split check: FAILED, patients in several splits: {', '.join(leaks[:10])}")
    return "\n".join(lines)
