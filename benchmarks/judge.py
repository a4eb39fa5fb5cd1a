"""How steady the judge is: the real-baseline AUROC of the evaluator over training seeds (issue 26).

Table 1 ranks generators by the AUROC the evaluator gives their follow-ups; if the evaluator's
own training seed moves that AUROC as much as the effects compared, the table cannot rank. This
trains the evaluator stage (`namd.training.evaluator.run_stage`, exactly as `namd train
evaluator` does) with each seed on the same cohort, scores the test split's real baselines and
real follow-ups, and reports mean and standard deviation over the seeds, with the stage's wall
time, for three recipes:

- before: the cohort and evaluator recipe of the tiny preset before issue 26 (600 pairs split
  70/10/20: 130 test nodules; one ViT, last weights since the validation split had too few
  malignant crops to select on, no EMA);
- cohort: the new cohort (1,000 pairs split 45/10/45: 470 test nodules, validation AUROC now
  selects the checkpoint) with the old recipe;
- after: the new cohort with the tiny preset's evaluator as it is now (EMA of the weights).

    python benchmarks/judge.py --dir runs/judge --out benchmarks/results/judge

Trained stages are kept under --dir and reused when the script runs again (delete a folder to
retrain it); each run's wall time is stored beside it (judge_time.json). Each training runs on
`--threads` torch threads in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine, publish, start_load

from namd.cohort.store import Cohort
from namd.cohort.synthetic import build_synthetic_cohort
from namd.config import NamdConfig, load_config, validated_update
from namd.evaluation.metrics import auroc
from namd.models.evaluator import load_evaluator, predict
from namd.run.layout import RunDir
from namd.training.evaluator import run_stage

# what each recipe changes in the tiny preset: the cohort (synth.*) and the evaluator
OLD_COHORT = {"synth.pairs": 600, "synth.unpaired": 400, "synth.split_fractions": [0.7, 0.1, 0.2],
              "synth.known_futures": 0}
OLD_RECIPE = {"evaluator.train.ema_decay": None}
RECIPES = {"before": {**OLD_COHORT, **OLD_RECIPE},
           "cohort": {"synth.known_futures": 0, **OLD_RECIPE},
           "after": {"synth.known_futures": 0}}


def recipe_config(name: str, seed: int) -> NamdConfig:
    """The tiny preset with the recipe's changes and the evaluator's training seed."""
    return validated_update(load_config("tiny"), {**RECIPES[name], "evaluator.train.seed": seed})


def cohort_of(root: Path, config: NamdConfig) -> Path:
    """The recipe's cohort, built once per synth config under root/cohorts."""
    key = "pairs{pairs}_unpaired{unpaired}_split{split}".format(
        pairs=config.synth.pairs, unpaired=config.synth.unpaired,
        split="-".join(f"{f:g}" for f in config.synth.split_fractions))
    path = root / "cohorts" / key
    if not (path / "run_info.json").is_file():
        build_synthetic_cohort(path, config, overwrite=True)
    return path


def trained(root: Path, name: str, seed: int) -> tuple[Path, Cohort, float]:
    """RUN of one recipe and seed with its evaluator trained (reused when done), its cohort
    and the stage's wall time in seconds."""
    config = recipe_config(name, seed)
    run = root / f"{name}_{seed}"
    cohort = cohort_of(root, config)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "cohort").exists():
        (run / "cohort").symlink_to(cohort.resolve())
    timing = run / "judge_time.json"
    if not RunDir(run).is_done("evaluator"):
        start = time.perf_counter()
        run_stage(config, RunDir(run), overwrite=True)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    return run, Cohort(run / "cohort"), json.loads(timing.read_text())["seconds"]


def scores(run: Path, cohort: Cohort) -> dict[str, float]:
    """Test AUROC of the run's evaluator on the real baselines and the real follow-ups."""
    model, window, info = load_evaluator(run / "evaluator")
    pairs = cohort.pairs("test")
    pairs = pairs[pairs["label"].notna()]
    y = pairs["label"].astype(int).to_numpy()
    out = {f"{kind}_auroc": auroc(y, predict(model, cohort.images(pairs[f"{kind}_index"]), window)[0])
           for kind in ("baseline", "followup")}
    return {**out, "n_test": int(len(y)), "n_malignant": int(y.sum()),
            "best_step": info.get("best_step"), "selection": info.get("selection")}


def summary(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown(record: dict) -> str:
    """The results table."""
    lines = ["# How steady the judge is", "",
             f"`python benchmarks/judge.py --dir {record['dir']} --seeds {record['seeds']}` "
             f"({record['date']}). The evaluator stage trained with each seed on the same cohort; "
             "test AUROC of the real baselines and real follow-ups; sd = sample standard "
             "deviation over the seeds. Issue 26 asks sd <= 0.01 for the real baseline at <= 3x "
             "the stage's cost before.", "",
             "| recipe | test nodules (malignant) | real baseline AUROC mean | sd | real follow-up "
             "AUROC mean | sd | stage wall time, mean (s) | time / before |",
             "|---|---|---|---|---|---|---|---|"]
    before = record["recipes"]["before"]["seconds"]["mean"]
    for name, r in record["recipes"].items():
        b, f, s = r["baseline_auroc"], r["followup_auroc"], r["seconds"]
        lines.append(f"| {name} | {r['n_test']} ({r['n_malignant']}) | {b['mean']:.3f} | "
                     f"{b['sd']:.4f} | {f['mean']:.3f} | {f['sd']:.4f} | {s['mean']:.0f} | "
                     f"{s['mean'] / before:.2f} |")
    lines += ["", "Per seed (real baseline AUROC / real follow-up AUROC, the checkpoint's step):", ""]
    for name, r in record["recipes"].items():
        cells = ", ".join(f"{p['baseline_auroc']:.3f} / {p['followup_auroc']:.3f} (step {p['best_step']})"
                          for p in r["per_seed"])
        lines.append(f"- {name}: {cells}")
    lines += ["", "What each recipe changes in the tiny preset: "
              + "; ".join(f"{k}: `{json.dumps(v)}`" for k, v in RECIPES.items()) + ".",
              "Wall times were taken while other work shared the machine (see the load line): "
              "compare them only as ratios within this file.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/judge", help="where cohorts and runs are kept")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = start_load()
    root, seeds = Path(args.dir), [int(s) for s in args.seeds.split(",")]
    record: dict = {"dir": args.dir, "seeds": args.seeds, "date": time.strftime("%Y-%m-%d"),
                    "recipes": {}}
    for name in args.recipes.split(","):
        per_seed = []
        for seed in seeds:
            run, cohort, seconds = trained(root, name, seed)
            per_seed.append({"seed": seed, "seconds": seconds, **scores(run, cohort)})
            print(name, per_seed[-1], flush=True)
        record["recipes"][name] = {
            "per_seed": per_seed, "n_test": per_seed[0]["n_test"],
            "n_malignant": per_seed[0]["n_malignant"],
            **{k: summary([p[k] for p in per_seed]) for k in ("baseline_auroc", "followup_auroc", "seconds")}}
    record["machine"] = machine(load)
    publish(args.out, record, markdown)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
