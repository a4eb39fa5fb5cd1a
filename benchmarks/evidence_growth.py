"""Evidence that the context steers growth: on the synthetic cohort, generated follow-ups of
malignant nodules should grow more than those of benign nodules, and the image-only model
(null context C) should show less of that difference.

Runs the pipeline's own commands in one run directory (finished stages are skipped, so an
interrupted run continues): synth -> train vae -> train prior -> train cond -> train cond
--null-context -> sample -> sample --null-context. Then measures, on the test pairs, a simple
nodule size of every crop (equivalent diameter of the tissue above a threshold near the crop
centre) and reports per label the growth of the real follow-ups and of the generated ones
(mean over the K samples), and how much of the malignant-benign gap remains without context.

    python benchmarks/evidence_growth.py --run runs/evidence [--preset tiny] [--set key=value]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from _results import publish

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


def central_diameter_mm(crops: np.ndarray, spacing_mm: np.ndarray, threshold_hu: float,
                        radius_mm: float) -> np.ndarray:
    """Equivalent diameter 2 sqrt(A / pi) (mm) of the tissue above `threshold_hu` within
    `radius_mm` of the crop centre; crops (N, ..., H, W), one spacing per nodule.

    A deliberately simple size: unlike a connected-component diameter it cannot jump to a
    vessel or the chest wall touching the nodule, and blur changes it little.
    """
    crops = np.asarray(crops, dtype=np.float32)
    h, w = crops.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1, *([1] * (crops.ndim - 1)))
    inside = r2[None] * sp ** 2 <= radius_mm ** 2  # (N, 1.., H, W) per-nodule disc
    area = ((crops > threshold_hu) & inside).sum((-2, -1)) * sp[..., 0, 0] ** 2
    return 2.0 * np.sqrt(area / np.pi)


def _diff_with_ci(values: np.ndarray, label: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """Mean growth per label, malignant - benign, and a 95% bootstrap interval (nodules resampled)."""
    rng = np.random.default_rng(seed)
    mal, ben = values[label == 1], values[label == 0]
    boots = [rng.choice(mal, len(mal)).mean() - rng.choice(ben, len(ben)).mean() for _ in range(n)]
    return {"malignant_mean_mm": float(mal.mean()), "benign_mean_mm": float(ben.mean()),
            "difference_mm": float(mal.mean() - ben.mean()),
            "difference_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n_malignant": int(len(mal)), "n_benign": int(len(ben))}


def _paired_ci(a: np.ndarray, b: np.ndarray, label: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of (label gap of a) - (label gap of b), resampling nodules jointly."""
    rng = np.random.default_rng(seed)
    mal, ben = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    out = []
    for _ in range(n):
        m, q = rng.choice(mal, len(mal)), rng.choice(ben, len(ben))
        out.append((a[m].mean() - a[q].mean()) - (b[m].mean() - b[q].mean()))
    return [float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))]


def growth_table(run: Path, threshold_hu: float, radius_mm: float) -> dict:
    """Growth by label: real follow-up vs baseline, and generated (mean of K) vs the VAE
    reconstruction of the baseline (the same blur as generated crops), for both models."""
    import pandas as pd
    import torch
    import yaml

    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.models.vae import load_trained_vae
    from namd.sampling import decode_to_hu, encode_hu

    cohort = Cohort(run / "cohort")
    window = tuple(load_config(base=yaml.safe_load((run / "config.yaml").read_text())).data.window_hu)
    index = pd.read_csv(run / "samples" / "index.csv", dtype={"pair_id": str})
    spacing = cohort.manifest.set_index("crop_index").loc[index["baseline_index"], "pixel_spacing_mm"].to_numpy()
    label = index["label"].to_numpy()

    def size(crops: np.ndarray) -> np.ndarray:
        return central_diameter_mm(crops, spacing, threshold_hu, radius_mm)

    base_hu = cohort.images(index["baseline_index"])
    vae, scale = load_trained_vae(run / "vae")
    with torch.inference_mode():
        recon = decode_to_hu(vae, encode_hu(vae, base_hu, scale, window, 16), scale, window, 16)
    base, base_rec = size(base_hu), size(recon)
    real = size(cohort.images(index["followup_index"])) - base
    out = {"real follow-up": _diff_with_ci(real, label),
           "baseline size": _diff_with_ci(base, label)}
    gen = {}
    for name in ("samples", "samples_null"):
        other = pd.read_csv(run / name / "index.csv", dtype={"pair_id": str})
        if not other["pair_id"].equals(index["pair_id"]):
            raise ValueError(f"{run / name}: nodules differ from {run / 'samples'}")
        gen[name] = size(np.load(run / name / "samples.npy", mmap_mode="r")).mean(1) - base_rec
        out[name] = _diff_with_ci(gen[name], label)
    out["context_minus_null_ci95"] = _paired_ci(gen["samples"], gen["samples_null"], label)
    return out


def context_sensitivity(run: Path, n: int = 64, seed: int = 0) -> dict:
    """How much the trained cond U-Net's noise prediction depends on C: RMS of
    eps(C) - eps(null) and eps(C) - eps(C of other nodules), relative to RMS eps, at three
    timesteps, for n test nodules at random noisy latents."""
    import torch
    import yaml

    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.diffusion import model_output
    from namd.rundir import RunDir, variant_dirs
    from namd.sampling import FollowUpSampler, pairs_to_sample

    rd = RunDir(run)
    config = load_config(base=yaml.safe_load((run / "config.yaml").read_text()))
    sampler = FollowUpSampler.from_run(rd, variant_dirs(), config)
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
    g = record["growth"]
    lines = ["# Evidence: does the context steer growth?", "",
             f"`python benchmarks/evidence_growth.py --run {record['run']} --preset {record['preset']}"
             + "".join(f" --set {o}" for o in record["overrides"]) + "`", "",
             f"Machine: {record['machine']}. Stage seconds (0 = finished by an earlier call): "
             f"{record['stage_seconds']}.", "",
             f"Size = equivalent diameter 2 sqrt(A / pi) of the tissue above {record['threshold_hu']:g} HU "
             f"within {record['radius_mm']:g} mm of the crop centre. Growth of a real follow-up: size "
             "minus the baseline's size; of a generated follow-up: mean size over its K samples minus "
             "the size of the baseline's VAE reconstruction (the same blur). Test split.", "",
             "| what | malignant (mm) | benign (mm) | malignant - benign (mm) [95% CI] |",
             "|---|---|---|---|"]
    for key, title in (("baseline size", "baseline size"), ("real follow-up", "growth, real follow-up"),
                       ("samples", "growth, NAMD (context C)"),
                       ("samples_null", "growth, null context (image only)")):
        r = g[key]
        lo, hi = r["difference_ci95"]
        lines.append(f"| {title} | {r['malignant_mean_mm']:.2f} (n={r['n_malignant']}) | "
                     f"{r['benign_mean_mm']:.2f} (n={r['n_benign']}) | {r['difference_mm']:.2f} "
                     f"[{lo:.2f}, {hi:.2f}] |")
    lo, hi = g["context_minus_null_ci95"]
    gap = g["samples"]["difference_mm"] - g["samples_null"]["difference_mm"]
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
    parser.add_argument("--threshold-hu", type=float, default=-400.0, help="tissue threshold")
    parser.add_argument("--radius-mm", type=float, default=10.0, help="central disc radius")
    parser.add_argument("--out", default=str(HERE / "results" / "evidence_growth"))
    args = parser.parse_args()
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    run = Path(args.run)
    times = run_stages(run, args.preset, args.overrides)
    record = {"run": str(run), "preset": args.preset, "overrides": args.overrides,
              "stage_seconds": {k: round(v) for k, v in times.items()},
              "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
              "threshold_hu": args.threshold_hu, "radius_mm": args.radius_mm,
              "growth": growth_table(run, args.threshold_hu, args.radius_mm),
              "context_sensitivity": context_sensitivity(run)}
    publish(args.out, record, markdown)


if __name__ == "__main__":
    main()
