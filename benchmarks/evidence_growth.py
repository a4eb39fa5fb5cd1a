"""Evidence that the context steers growth: on the synthetic cohort, generated follow-ups of
malignant nodules should grow more than those of benign nodules, and the image-only model
(null context C) should show less of that difference.

Runs the pipeline's own commands in one run directory (finished stages are skipped, so an
interrupted run continues): synth -> train vae -> train prior -> train cond -> train cond
--null-context -> sample -> sample --null-context. Then measures, on the test pairs, the
longest diameter of every crop (namd.evaluation.quality.diameters_mm: the central component
at half contrast) and reports per label the growth = diameter(generated) - diameter(baseline),
averaged over the K samples, next to the real follow-up's growth.

    python benchmarks/evidence_growth.py --run runs/evidence [--preset tiny] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_stages(run: Path, preset: str, overrides: list[str]) -> dict[str, float]:
    """The stages through the CLI; returns seconds per stage (0 = already done)."""
    from namd.cli import main
    from namd.config import load_config, save_config
    from namd.rundir import RunDir

    rd = RunDir(run)
    if not (run / "config.yaml").is_file():
        save_config(load_config(preset, overrides=overrides), run / "config.yaml")
    r = str(run)
    steps = [("cohort", ["synth", "--out", f"{r}/cohort", "--config", f"{r}/config.yaml"]),
             ("vae", ["train", "vae", "--run", r, "--resume"]),
             ("prior", ["train", "prior", "--run", r, "--resume"]),
             ("cond", ["train", "cond", "--run", r, "--resume"]),
             ("cond_null", ["train", "cond", "--run", r, "--resume", "--null-context"]),
             ("samples", ["sample", "--run", r]),
             ("samples_null", ["sample", "--run", r, "--null-context"])]
    times = {}
    for folder, argv in steps:
        if rd.is_done(folder):
            times[folder] = 0.0
            continue
        print(f"== namd {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        if main(argv) != 0:
            raise SystemExit(f"stage {folder} failed")
        times[folder] = time.perf_counter() - start
    return times


def _bootstrap_diff(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b)."""
    rng = np.random.default_rng(seed)
    diffs = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n)]
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def growth_table(run: Path) -> dict:
    """Growth by label for the real follow-ups and both sample sets."""
    import pandas as pd

    from namd.cohort.store import Cohort
    from namd.evaluation.quality import diameters_mm

    cohort = Cohort(run / "cohort")
    spacing = cohort.manifest.set_index("crop_index")["pixel_spacing_mm"]
    out: dict = {}
    for name in ("samples", "samples_null"):
        samples = np.load(run / name / "samples.npy", mmap_mode="r")
        index = pd.read_csv(run / name / "index.csv", dtype={"pair_id": str})
        sp = spacing.loc[index["baseline_index"]].to_numpy()
        base = diameters_mm(cohort.images(index["baseline_index"]), sp)
        real = diameters_mm(cohort.images(index["followup_index"]), sp)
        gen = diameters_mm(np.asarray(samples), sp).mean(1)
        label = index["label"].to_numpy()
        rows = {}
        for what, values in (("real follow-up", real - base), ("generated", gen - base)):
            mal, ben = values[label == 1], values[label == 0]
            rows[what] = {"malignant_mean_mm": float(mal.mean()), "benign_mean_mm": float(ben.mean()),
                          "difference_mm": float(mal.mean() - ben.mean()),
                          "difference_ci95": _bootstrap_diff(mal, ben),
                          "n_malignant": int(len(mal)), "n_benign": int(len(ben))}
        out[name] = rows
    return out


def markdown(record: dict) -> str:
    """Results as a table."""
    lines = ["# Evidence: does the context steer growth?", "",
             f"`python benchmarks/evidence_growth.py --run {record['run']} --preset {record['preset']}"
             + "".join(f" --set {o}" for o in record["overrides"]) + "`", "",
             f"Machine: {record['machine']}. Stage seconds: {record['stage_seconds']}.", "",
             "Growth = longest diameter (mm) of the crop minus that of the baseline crop; generated "
             "crops: mean over the K samples of a nodule. Test split.", "",
             "| model | crops | malignant growth (mm) | benign growth (mm) | difference (mm) [95% CI] |",
             "|---|---|---|---|---|"]
    for model, name in (("NAMD (context C)", "samples"), ("null context (image only)", "samples_null")):
        for what, r in record["growth"][name].items():
            if what == "real follow-up" and name == "samples_null":
                continue
            lo, hi = r["difference_ci95"]
            lines.append(f"| {model if what == 'generated' else '-'} | {what} | {r['malignant_mean_mm']:.2f} "
                         f"(n={r['n_malignant']}) | {r['benign_mean_mm']:.2f} (n={r['n_benign']}) | "
                         f"{r['difference_mm']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/evidence")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(HERE / "results" / "evidence_growth"))
    args = parser.parse_args()
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    run = Path(args.run)
    times = run_stages(run, args.preset, args.overrides)
    record = {"run": str(run), "preset": args.preset, "overrides": args.overrides,
              "stage_seconds": {k: round(v) for k, v in times.items()},
              "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "growth": growth_table(run)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
