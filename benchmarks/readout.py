"""The radiologist's readout (namd.clinical, issue 31): the measurer's own error, the readout
against what happened, and what it adds to `namd predict`'s time.

    python benchmarks/readout.py error [--pairs 400]
        the measurer against the synthetic generator's true diameters, per nodule type (the
        defaults of namd.config.readout)
    python benchmarks/readout.py agree --cohort RUN/cohort [--run RUN] [--n 470]
        on the labelled test pairs: the baseline's copy, the known futures (the generator's own,
        an ideal generator), every method sampled in RUN, the real follow-up: weighted kappa of
        the most likely follow-up category, AUROC and Brier of P(growth > 1.5 mm) and P(>= 4A)
    python benchmarks/readout.py time [--k 20] [--repeats 3]
        namd predict's pipeline (tiny preset, untrained weights: the same cost as trained ones)
        with and without the readout, one patient, K = 20

Each writes benchmarks/results/readout_<part>.{json,md} (--out to change), then
benchmarks/results/readout.md: the three parts' Markdown, in that order, as they now stand.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import machine, publish, start_load

HERE = Path(__file__).resolve().parent
ROWS = ("baseline_copy", "known_futures")


def run_error(pairs: int, seed: int) -> dict:
    """The measurer's error per nodule type (namd.clinical.calibrate)."""
    from namd.clinical.calibrate import measurer_error
    from namd.config.data import DataConfig, SynthConfig

    out = measurer_error(SynthConfig(seed=seed), DataConfig(), pairs)  # no timing: no load record
    return {"command": f"python benchmarks/readout.py error --pairs {pairs} --seed {seed}", "error": out}


def md_error(r: dict) -> str:
    """The error table."""
    e = r["error"]
    lines = ["# The measurer against the generator's true diameters", "", f"`{r['command']}`", "",
             f"{e['pairs']} synthetic pairs (both visits: {e['crops']} crops, {e['not_measurable']} "
             "not measurable); error = measured - true mean diameter (mm), Lung-RADS' (long + "
             "short) / 2; growth error = error at follow-up - error at baseline (pairs whose type "
             "stays); class = the image's attenuation class agrees with the true type.", "",
             "| type | crops | bias | sd | MAE | pairs | growth sd | class agrees | solid bias | solid sd |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("solid", "part-solid", "non-solid"):
        k = e[kind]
        solid = (f"{k['solid_bias_mm']:+.2f} | {k['solid_sd_mm']:.2f}" if "solid_bias_mm" in k else "– | –")
        lines.append(f"| {kind} | {k['n']} | {k['bias_mm']:+.2f} | {k['size_sd_mm']:.2f} | "
                     f"{k['mae_mm']:.2f} | {k['growth_n']} | {k['growth_sd_mm']:.2f} | "
                     f"{k['class_agreement']:.0%} | {solid} |")
    return "\n".join(lines) + "\n"


def run_agree(cohort_dir: str, run_dir: str | None, n: int) -> dict:
    """Every row's readout scored on the labelled test pairs (those with known futures)."""
    from namd.clinical.rows import score_rows
    from namd.cohort.known_futures import read_known_futures
    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.config.methods import METHODS
    from namd.evaluation.report.figures_examples import load_samples

    cohort = Cohort(cohort_dir)
    pairs = cohort.pairs("test")
    pairs = pairs[pairs["label"].notna()]
    known = read_known_futures(Path(cohort_dir))
    if not isinstance(known, str):
        pairs = pairs[pairs["pair_id"].isin(known.pair_ids)]
    pairs = pairs.head(n).reset_index(drop=True)
    futures = None if isinstance(known, str) else known.of(pairs["pair_id"].tolist())[:, :known.reference]
    rows = {}
    if run_dir:
        for m in METHODS.values():
            folder = Path(run_dir) / m.samples
            if (folder / "samples.npy").is_file():
                samples, index = load_samples(folder)
                where = {p: i for i, p in enumerate(index["pair_id"])}
                rows[m.name] = np.stack([np.asarray(samples[where[p]], np.float32) for p in pairs["pair_id"]])
    cfg = load_config().readout
    start = time.perf_counter()
    scores = score_rows(cohort, pairs, rows, cfg, futures)
    command = f"python benchmarks/readout.py agree --cohort {cohort_dir} --n {n}" + (
        f" --run {run_dir}" if run_dir else "")
    return {"command": command, "pairs": len(pairs), "malignant": int((pairs["label"] == 1).sum()),
            "rows": scores, "seconds": time.perf_counter() - start}  # deterministic: no load record


def _f(value: float | None, digits: int = 3) -> str:
    """A number, or – when absent or NaN."""
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def md_agree(r: dict) -> str:
    """The agreement table, one line per row, and each row's confusion matrix."""
    from namd.clinical.lungrads import CATEGORIES

    lines = ["# The readout against what happened", "", f"`{r['command']}`", "",
             f"{r['pairs']} labelled test pairs ({r['malignant']} malignant); what happened = the real "
             "follow-up crop against the real baseline, both measured by the same measurer; "
             "recorded = the cohort's recorded diameters. Rows: the baseline's copy (no change), "
             "the known futures (the synthetic generator's own: an ideal generator), the sampled "
             "methods, the real follow-up read through the drawn measurement error (the ceiling). "
             f"{r['seconds']:.0f} s for all rows (on a shared machine).", "",
             "| row | K | n | not measurable | kappa (linear) | exact | growth > 1.5: AUROC | Brier | "
             "recorded growth: AUROC | >= 4A: AUROC | Brier | Brock AUROC (growth / >= 4A) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in r["rows"].items():
        if s.get("status") != "ok":
            lines.append(f"| {name} | {s.get('k', '')} | 0 | | {s['status']} | | | | | | | |")
            continue
        g, h, rec, b = s["growth"], s["at_least_4a"], s.get("growth_recorded", {}), s.get("brock", {})
        lines.append(f"| {name} | {s['k']} | {s['n']} | {s['not_measurable_share']:.1%} | "
                     f"{_f(s['kappa_linear'])} | {s['exact_agreement']:.0%} | {_f(g['auroc'])} | "
                     f"{_f(g['brier'])} | {_f(rec.get('auroc'))} | {_f(h['auroc'])} | "
                     f"{_f(h['brier'])} | {_f(b.get('auroc_growth'))} / {_f(b.get('auroc_at_least_4a'))} |")
    for name, s in r["rows"].items():
        if s.get("status") == "ok":
            lines += ["", f"Confusion of {name} (rows: real category; columns: most likely):", "",
                      "| real \\ predicted | " + " | ".join(CATEGORIES) + " |",
                      "|---|" + "---:|" * len(CATEGORIES)]
            lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                      for c, row in zip(CATEGORIES, s["confusion"], strict=True)]
    return "\n".join(lines) + "\n"


def _tiny_run(folder: Path):
    """A finished run at the tiny preset's sizes (what `namd demo` trains), one training step
    per stage: sampling costs what a trained one does."""
    import torch

    from namd.cli.main import main
    from namd.cohort.synthetic import generate_cohort
    from namd.config import load_config, save_config
    from namd.models.vae import build_vae, save_trained_vae
    from namd.run.layout import RunDir

    run = RunDir(folder)
    config = load_config("tiny", overrides=[
        "synth.pairs=40", "synth.unpaired=20", "synth.known_futures=0", "diffusion.prior.max_steps=1",
        "diffusion.cond.max_steps=1", "evaluator.train.max_steps=1", "evaluator.select_min_malignant=0"])
    generate_cohort(run.stage("cohort"), config.synth, config.data)
    save_config(config, run.path / "config.yaml")
    torch.manual_seed(0)
    save_trained_vae(build_vae(config.vae), run.stage("vae"), scale_factor=0.18)
    run.mark_done("vae", config, 0)
    for stage in ("prior", "cond", "evaluator"):
        assert main(["train", stage, "--run", str(run.path)]) == 0
    return run


def _predict_command(run, crop, ehr, k: int, folder: Path, readout: bool) -> float:
    """Seconds of one `namd predict --run RUN --crop --ehr --k K --out` in this process (its
    imports already warm: a shorter time than a fresh process's, so a larger readout share);
    without the readout, namd.inference.pipeline's read_patient is replaced by one returning {}."""
    import contextlib
    import io
    import json

    import namd.inference.pipeline as P
    from namd.cli.main import main

    np.save(folder / "crop.npy", crop)
    (folder / "ehr.json").write_text(json.dumps({k_: v for k_, v in ehr.as_dict().items() if v is not None}))
    real = P.read_patient
    P.read_patient = real if readout else (lambda *a, **kw: {})
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["predict", "--run", str(run.path), "--ehr", str(folder / "ehr.json"),
                         "--crop", str(folder / "crop.npy"), "--k", str(k), "--out",
                         str(folder / "out"), "--device", "cpu"]) == 0
        return time.perf_counter() - start
    finally:
        P.read_patient = real


def run_time(k: int, repeats: int) -> dict:
    """namd predict (the command, and its pipeline call) for one patient with and without the
    readout, alternating, and the readout alone."""
    import torch

    from namd.clinical.readout import read_patient
    from namd.cohort.store import Cohort
    from namd.inference.pipeline import NAMDPipeline

    before = start_load()
    times: dict[str, list[float]] = {"command_without": [], "command_with": [],
                                     "pipeline_without": [], "pipeline_with": [], "readout_alone": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = _tiny_run(Path(tmp) / "run")
        pipe = NAMDPipeline.from_run(run, device="cpu")
        cohort = Cohort(run.stage("cohort"))
        row = cohort.pairs("test").iloc[0]
        crop, ehr = cohort.images([int(row["baseline_index"])])[0], Cohort.ehr(row)
        for _ in range(repeats):
            for flag, name in ((False, "without"), (True, "with")):
                times[f"command_{name}"].append(_predict_command(run, crop, ehr, k, Path(tmp), flag))
                start = time.perf_counter()
                pred = pipe.predict([crop], [ehr], k=k, keys=["p"], readout=flag)[0]
                times[f"pipeline_{name}"].append(time.perf_counter() - start)
            start = time.perf_counter()
            read_patient(crop, pred.samples, ehr, pipe.config.data.pixel_spacing_mm,
                         pipe.config.readout, "p")
            times["readout_alone"].append(time.perf_counter() - start)
        steps = pipe.sampling_config().steps
    best = {name: min(v) for name, v in times.items()}
    return {"command": f"python benchmarks/readout.py time --k {k} --repeats {repeats}", "k": k,
            "steps": steps, "times": times, "best": best,
            "share_of_command": best["readout_alone"] / best["command_without"],
            "share_of_pipeline": best["readout_alone"] / best["pipeline_without"],
            "threads": torch.get_num_threads(), "machine": machine(before)}


def md_time(r: dict) -> str:
    """The timing table and the share."""
    b = r["best"]
    return "\n".join([
        "# What the readout adds to namd predict", "", f"`{r['command']}`", "",
        f"One patient, K = {r['k']}, tiny preset ({r['steps']} sampler steps: the CPU preset's, "
        f"the fastest sampling namd ships), CPU, {r['threads']} torch thread(s); best of "
        f"{len(r['times']['readout_alone'])} alternating runs. The command runs in this process "
        "(imports warm, model loaded each time, outputs written).", "",
        "| | without the readout (s) | with (s) |", "|---|---:|---:|",
        f"| `namd predict` (the command) | {b['command_without']:.3f} | {b['command_with']:.3f} |",
        f"| NAMDPipeline.predict (sampling and scoring only) | {b['pipeline_without']:.3f} | "
        f"{b['pipeline_with']:.3f} |",
        f"| the readout alone (read_patient: measure K + 1 crops, categorise K x draws) | | "
        f"{b['readout_alone']:.3f} |", "",
        f"The readout is **{r['share_of_command']:.1%}** of `namd predict`'s time (target < 5%) and "
        f"{r['share_of_pipeline']:.1%} of the pipeline call's alone; most of it is the measurer "
        f"({1000 * b['readout_alone'] / (r['k'] + 1):.1f} ms per measured crop in all). The "
        "differences of the with / without timings are within their run-to-run noise."]) + "\n"


def combine(results: Path) -> None:
    """results/readout.md: the error, agreement and time parts that exist, one after another."""
    from namd.run.provenance import atomic_write_text

    parts = [results / f"readout_{part}.md" for part in ("error", "agree", "time")]
    text = "\n".join(p.read_text().replace("\n# ", "\n## ").replace("# ", "## ", 1)
                     for p in parts if p.is_file())
    atomic_write_text(results / "readout.md", "# The radiologist's readout (issue 31)\n\n"
                      "Research use only, not a medical device. docs/readout.md says how each "
                      "number is made.\n\n" + text)


def main() -> None:
    """Parse the part to run and publish its record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    e = sub.add_parser("error")
    e.add_argument("--pairs", type=int, default=400)
    e.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("agree")
    a.add_argument("--cohort", required=True)
    a.add_argument("--run", default=None)
    a.add_argument("--n", type=int, default=470)
    t = sub.add_parser("time")
    t.add_argument("--k", type=int, default=20)
    t.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = args.out or HERE / "results" / f"readout_{args.part}"
    if args.part == "error":
        publish(out, run_error(args.pairs, args.seed), md_error)
    elif args.part == "agree":
        publish(out, run_agree(args.cohort, args.run, args.n), md_agree)
    else:
        publish(out, run_time(args.k, args.repeats), md_time)
    if args.out is None:
        combine(HERE / "results")


if __name__ == "__main__":
    main()
