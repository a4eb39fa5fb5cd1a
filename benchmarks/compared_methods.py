"""Table 1 with the compared methods (issue 29): each generated row beside the paper's numbers,
what each method's own stages cost against NAMD's chain in the same run, and the full table's
wall time beside `make demo`'s.

Reads RUN/eval/metrics.json and RUN/pipeline.json of a `namd demo --methods all` run (and of a
`make demo` run, `--demo`, for its wall time). A method's cost is the seconds of the stages it
trains and of its sample stage; a stage it reads from another method (SD1.5 and Flux read the
no-align VAE) is listed, not counted. With `--jobs 2` on two cores every stage runs on one
thread, so its seconds are close to its CPU-seconds.

    python benchmarks/compared_methods.py --run runs/table --demo runs/demo_after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import publish, speed_line

from namd.config import methods

HERE = Path(__file__).resolve().parent


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cost(name: str, seconds: dict[str, float]) -> dict:
    """The seconds of a method's own stages and its sample stage, and the stages it reads."""
    m = methods.get(name)
    own = {f: seconds.get(f) for f in (*(s.folder for s in m.trains), m.samples)}
    total = None if any(v is None for v in own.values()) else sum(own.values())
    return {"stages": own, "reads": sorted(set(m.uses.values()) - set(own)), "seconds": total}


def _cell(stat: dict | None) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "-"
    sd = f" ± {stat['std']:.3f}" if stat.get("std") else ""
    lo, hi = stat.get("ci95") or (None, None)
    return f"{stat['mean']:.3f}{sd}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def _paper(name: str) -> str:
    p = dict(methods.METHODS[name].paper) if name in methods.METHODS else {}
    if not p:
        return ""
    sd = f" ± {p['auroc_std']:.3f}" if "auroc_std" in p else ""  # deterministic rows: none
    return f"{p['auroc']:.3f}{sd} / {p['auprc']:.3f} / {p['lpips']:.3f} / {p['fid']:.1f}"


def markdown(r: dict) -> str:
    """The record as a results page."""
    p, lines = r["pipeline"], []
    lines += ["# Table 1 with the compared methods", "", f"`{r['command']}`", "",
              f"{r['run']}: `--jobs {p['jobs']}` on {p['cpus']} CPUs, methods {', '.join(p['methods'])}: "
              f"**{p['wall_seconds'] / 60:.1f} min** wall, {p['cpu_seconds'] / 60:.1f} min CPU."
              + speed_line(p)]
    if r.get("demo"):
        d = r["demo"]
        lines += ["", f"`make demo` ({r['demo_run']}, methods {', '.join(d['methods'])}): "
                  f"**{d['wall_seconds'] / 60:.1f} min** wall, {d['cpu_seconds'] / 60:.1f} min CPU."
                  + speed_line(d) + f" The full table takes {p['wall_seconds'] / d['wall_seconds']:.2f}x "
                  "its wall time."]
    lines += ["", "## What each method costs (seconds per stage, one thread each)", "",
              "| method | its stages | seconds | / NAMD's chain | reads |", "|---|---|---|---|---|"]
    ref = r["costs"][methods.REFERENCE]["seconds"]
    for name, c in r["costs"].items():
        stages = ", ".join(f"{k} {v:.0f}" if v is not None else f"{k} -" for k, v in c["stages"].items())
        ratio = "-" if c["seconds"] is None or not ref else f"{c['seconds'] / ref:.2f}"
        secs = "-" if c["seconds"] is None else f"{c['seconds']:.0f}"
        lines.append(f"| {name} | {stages} | {secs} | {ratio} | {', '.join(c['reads']) or '-'} |")
    m = r["metrics"]
    lines += ["", f"## Table 1 (test split, {m['n_test']} nodules, {m['n_malignant']} malignant, "
              f"K = {m['k']})", "",
              "| row | AUROC | AUPRC | AUROC of the mean p | evaluator-feature Fréchet | "
              "known futures: diameter, density (energy) | paper: AUROC / AUPRC / LPIPS / FID |",
              "|---|---|---|---|---|---|---|"]
    iq, kf = m.get("image_quality") or {}, (m.get("known_futures") or {}).get("rows") or {}
    for row in m["rows"]:
        name = row["name"]
        q, k = iq.get(name) or {}, kf.get(name) or {}
        fre = q.get("frechet_evaluator")
        fut = (f"{k['energy_diameter_mm']:.2f} mm, {k['energy_density_hu']:.1f} HU"
               if k.get("status") == "ok" else "-")
        mean_p = "-" if row.get("mean_prob_auroc") is None else f"{row['mean_prob_auroc']:.3f}"
        lines.append(f"| {name} | {_cell(row.get('auroc'))} | {_cell(row.get('auprc'))} | {mean_p} | "
                     f"{'-' if fre is None else f'{fre:.3f}'} | {fut} | {_paper(name)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `namd demo --methods all` run")
    parser.add_argument("--demo", help="a `make demo` run of the same day, for its wall time")
    parser.add_argument("--out", default=str(HERE / "results" / "compared_methods"))
    args = parser.parse_args()
    run = Path(args.run)
    pipeline = _read(run / "pipeline.json")
    seconds = pipeline["stage_seconds"]
    record = {"run": str(run), "command": "python benchmarks/compared_methods.py --run "
              f"{args.run}" + (f" --demo {args.demo}" if args.demo else ""),
              "pipeline": pipeline, "metrics": _read(run / "eval" / "metrics.json"),
              "costs": {n: cost(n, seconds) for n in pipeline["methods"]},
              "demo": _read(Path(args.demo) / "pipeline.json") if args.demo else None,
              "demo_run": args.demo}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
