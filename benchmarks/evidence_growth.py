"""Evidence that the context steers growth: on the synthetic cohort, generated follow-ups of
malignant nodules should grow more than those of benign nodules, and the image-only model
(null context C) should show less of that difference.

Runs the pipeline's own commands in one run directory (finished stages are skipped, so an
interrupted run continues): synth -> train vae -> train prior -> train cond -> train cond
--method null_context -> sample -> sample --method null_context. Then measures, on the test pairs, the
growth section's nodule size of every crop (namd.evaluation.growth.nodule_size_mm) and reports
per label the growth of the real follow-ups and of the generated ones
(mean over the K samples), and how much of the malignant-benign gap remains without context.

    python benchmarks/evidence_growth.py --run runs/evidence [--preset tiny] [--set key=value]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _results import load_line, machine, publish, start_load

from namd.evaluation.growth import SIZE, label_difference, nodule_size_mm, paired_gap_ci

HERE = Path(__file__).resolve().parent


def run_stages(run: Path, preset: str, overrides: list[str]) -> dict[str, float]:
    """The stages through the CLI; returns seconds per stage (0 = already done)."""
    from namd.cli.main import main
    from namd.config import load_config, save_config
    from namd.run.layout import RunDir

    rd = RunDir(run)
    if not (run / "config.yaml").is_file():
        save_config(load_config(preset, overrides=overrides), run / "config.yaml")
    r = str(run)
    steps = [("cohort", ["synth", "--out", f"{r}/cohort", "--config", f"{r}/config.yaml"]),
             ("vae", ["train", "vae", "--run", r, "--resume"]),
             ("prior", ["train", "prior", "--run", r, "--resume"]),
             ("cond", ["train", "cond", "--run", r, "--resume"]),
             ("cond_null_context", ["train", "cond", "--run", r, "--resume", "--method", "null_context"]),
             ("samples", ["sample", "--run", r]),
             ("samples_null_context", ["sample", "--run", r, "--method", "null_context"])]
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


def growth_table(run: Path) -> dict:
    """Growth by label: real follow-up vs baseline, and generated (mean of K) vs the VAE
    reconstruction of the baseline (the same blur as generated crops), for both models."""
    import pandas as pd
    import torch
    import yaml

    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.inference.sampler import decode_to_hu, encode_hu
    from namd.models.vae import load_trained_vae

    cohort = Cohort(run / "cohort")
    window = tuple(load_config(base=yaml.safe_load((run / "config.yaml").read_text())).data.window_hu)
    index = pd.read_csv(run / "samples" / "index.csv", dtype={"pair_id": str})
    spacing = cohort.manifest.set_index("crop_index").loc[index["baseline_index"], "pixel_spacing_mm"].to_numpy()
    label = index["label"].to_numpy()

    def size(crops: np.ndarray) -> np.ndarray:
        return nodule_size_mm(crops, spacing)

    base_hu = cohort.images(index["baseline_index"])
    vae, scale = load_trained_vae(run / "vae")
    with torch.inference_mode():
        recon = decode_to_hu(vae, encode_hu(vae, base_hu, scale, window, 16), scale, window, 16)
    base, base_rec = size(base_hu), size(recon)
    real = size(cohort.images(index["followup_index"])) - base
    out = {"real follow-up": label_difference(real, label),
           "baseline size": label_difference(base, label)}
    gen = {}
    for name in ("samples", "samples_null_context"):
        other = pd.read_csv(run / name / "index.csv", dtype={"pair_id": str})
        if not other["pair_id"].equals(index["pair_id"]):
            raise ValueError(f"{run / name}: nodules differ from {run / 'samples'}")
        gen[name] = size(np.load(run / name / "samples.npy", mmap_mode="r")).mean(1) - base_rec
        out[name] = label_difference(gen[name], label)
    out["context_minus_null_ci95"] = paired_gap_ci(gen["samples"], gen["samples_null_context"], label)
    return out


def context_sensitivity(run: Path, n: int = 64, seed: int = 0) -> dict:
    """How much the trained cond U-Net's noise prediction depends on C: RMS of
    eps(C) - eps(null) and eps(C) - eps(C of other nodules), relative to RMS eps, at three
    timesteps, for n test nodules at random noisy latents."""
    import torch
    import yaml

    from namd.cohort.store import Cohort
    from namd.config import load_config, methods
    from namd.inference.sampler import FollowUpSampler, pairs_to_sample
    from namd.models.schedules import model_output
    from namd.run.layout import RunDir

    rd = RunDir(run)
    config = load_config(base=yaml.safe_load((run / "config.yaml").read_text()))
    sampler = FollowUpSampler.from_run(rd, methods.get(methods.REFERENCE).uses, config)
    cohort = Cohort(run / "cohort")
    pairs = pairs_to_sample(cohort, "test").iloc[:n]
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]),
                                [Cohort.ehr(row) for _, row in pairs.iterrows()])
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(pairs), *sampler.latent_shape, generator=g)
    other = cond.context[torch.randperm(len(pairs), generator=g)]
    out = {"context_norm": float(cond.context.norm(dim=-1).mean())}
    with torch.inference_mode():
        for t in (900, 500, 100):
            tt = torch.full((len(pairs),), t)
            eps = model_output(sampler.unet, z, tt, cond.context, cond.baseline)
            null = model_output(sampler.unet, z, tt, cond.null.expand_as(cond.context), cond.baseline)
            shuf = model_output(sampler.unet, z, tt, other, cond.baseline)
            rms = float(eps.pow(2).mean().sqrt())
            out[f"t={t}"] = {"null_vs_C": float((eps - null).pow(2).mean().sqrt()) / rms,
                             "shuffled_vs_C": float((eps - shuf).pow(2).mean().sqrt()) / rms}
    return out


def markdown(record: dict) -> str:
    """Results as a table."""
    g, m = record["growth"], record["machine"]
    lines = ["# Evidence: does the context steer growth?", "",
             f"`python benchmarks/evidence_growth.py --run {record['run']} --preset {record['preset']}"
             + "".join(f" --set {o}" for o in record["overrides"]) + "`", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs. {load_line(m)} Stage seconds (0 = finished "
             f"by an earlier call): {record['stage_seconds']}.", "",
             f"Size = {record.get('size', SIZE)}. Growth of a real follow-up: size "
             "minus the baseline's size; of a generated follow-up: mean size over its K samples minus "
             "the size of the baseline's VAE reconstruction (the same blur). Test split.", "",
             "| what | malignant (mm) | benign (mm) | malignant - benign (mm) [95% CI] |",
             "|---|---|---|---|"]
    for key, title in (("baseline size", "baseline size"), ("real follow-up", "growth, real follow-up"),
                       ("samples", "growth, NAMD (context C)"),
                       ("samples_null_context", "growth, null context (image only)")):
        r = g[key]
        lo, hi = r["difference_ci95"]
        lines.append(f"| {title} | {r['malignant_mean_mm']:.2f} (n={r['n_malignant']}) | "
                     f"{r['benign_mean_mm']:.2f} (n={r['n_benign']}) | {r['difference_mm']:.2f} "
                     f"[{lo:.2f}, {hi:.2f}] |")
    lo, hi = g["context_minus_null_ci95"]
    gap = g["samples"]["difference_mm"] - g["samples_null_context"]["difference_mm"]
    lines += ["", f"Label gap with context minus gap without: {gap:.2f} mm [{lo:.2f}, {hi:.2f}] "
              "(paired bootstrap over nodules).", ""]
    sens = record.get("context_sensitivity")
    if sens:
        parts = [f"t={t.split('=')[1]}: {100 * v['null_vs_C']:.1f}% / {100 * v['shuffled_vs_C']:.1f}%"
                 for t, v in sens.items() if t.startswith("t=")]
        lines += [f"Context sensitivity of the trained cond U-Net (RMS change of its noise prediction "
                  f"when C is replaced by the null context / by other nodules' C, relative to RMS eps; "
                  f"mean |C| = {sens['context_norm']:.2f}): " + "; ".join(parts) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/evidence")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(HERE / "results" / "evidence_growth"))
    args = parser.parse_args()
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    run = Path(args.run)
    before = start_load()
    times = run_stages(run, args.preset, args.overrides)
    growth, sensitivity = growth_table(run), context_sensitivity(run)
    record = {"run": str(run), "preset": args.preset, "overrides": args.overrides,
              "stage_seconds": {k: round(v) for k, v in times.items()}, "machine": machine(before),
              "size": SIZE,
              "growth": growth, "context_sensitivity": sensitivity}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
