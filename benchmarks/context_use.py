"""What the record's context C carries and how much the trained model uses it (issue 18's
diagnosis): the malignancy probe on C against one on the record's fields (training pairs), the
U-Net's sensitivity to swapped C per timestep band, and how far samples move when C is swapped
(test pairs, same seeds), for one or more finished runs (`namd.evaluation.context_use`).

    python benchmarks/context_use.py --run runs/demo_final --run runs/ctx/cfg15_g2 \
        --out benchmarks/results/context_use
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _results import load_line, machine, publish, start_load


def measure(run: Path, n: int, seed: int) -> dict:
    """The three measures for the NAMD cond stage of `run`."""
    import yaml

    from namd.cohort.store import Cohort
    from namd.config import load_config, methods
    from namd.evaluation import context_use as cu
    from namd.inference.sampler import FollowUpSampler, pairs_to_sample
    from namd.run.layout import RunDir

    start = time.perf_counter()
    config = load_config(base=yaml.safe_load((run / "config.yaml").read_text()))
    sampler = FollowUpSampler.from_run(RunDir(run), methods.get(methods.REFERENCE).uses, config)
    cohort = Cohort(run / "cohort")
    train = cohort.pairs("train").dropna(subset=["label"])
    probe = cu.probe(sampler.encoder, train, seed)
    pairs = pairs_to_sample(cohort, "test").iloc[:n]
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(r) for _, r in pairs.iterrows()])
    return {"run": str(run), "encoder": config.text.encoder, "guidance": config.sampling.guidance_scale,
            "probe": probe, "sensitivity": cu.sensitivity(sampler.unet, cond.baseline, cond.context, seed),
            "sample_shift": cu.sample_shift(sampler, cond, config.sampling, seed), "n_test": len(pairs),
            "seconds": round(time.perf_counter() - start, 1)}


def markdown(record: dict) -> str:
    """One row per run."""
    lines = ["# What the context C carries and how much the model uses it", "",
             f"`{record['command']}`", "", f"Machine: {json.dumps(record['machine'])}", "",
             load_line(record["machine"]), "",
             "| run | encoder | guidance | probe AUROC from C | from the 13 fields | sensitivity to swapped C "
             "(0-100 / 100-300 / 300-600 / 600-1000) | sample shift, swapped C (HU) | draw vs draw (HU) | "
             "shift / spread |", "|---|---|---|---|---|---|---|---|---|"]
    def f(v):
        return "–" if v is None else f"{v:.3f}"
    for r in record["runs"]:
        s, p, m = r["sensitivity"], r["probe"], r["sample_shift"]
        lines.append(f"| {r['run']} | {r['encoder']} | {r['guidance']} | {f(p['auroc_from_context'])} | "
                     f"{f(p['auroc_from_record_fields'])} | {' / '.join(f(v) for v in s.values())} | "
                     f"{m['swapped_vs_own_hu']:.1f} | {m['draw_vs_draw_hu']:.1f} | {m['shift_over_spread']:.2f} |")
    r0 = record["runs"][0]
    lines += ["", f"Probe: 5-fold cross-validated, class-balanced logistic regression on the training pairs "
              f"({r0['probe']['n']} pairs, {r0['probe']['n_malignant']} malignant). Sensitivity: RMS change "
              f"of the U-Net's output when C is swapped between patients, relative to its RMS, at each "
              f"band's middle timestep, {r0['n_test']} test pairs. Sample shift: K = 2 samples per test "
              "pair with the run's sampler and the same seeds, own C against another patient's."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure every run and publish one table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a finished run (repeatable)")
    p.add_argument("--n", type=int, default=130, help="test pairs for the sensitivity and the shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results path without suffix (.json and .md)")
    args = p.parse_args()
    before = start_load()
    runs = [measure(Path(r), args.n, args.seed) for r in args.run]
    command = "python benchmarks/context_use.py " + " ".join(f"--run {r}" for r in args.run)
    record = {"command": command, "machine": machine(before), "runs": runs}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
