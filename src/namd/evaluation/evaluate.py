"""`namd evaluate`: the comparison table of paper Table 1, image quality and variance analysis.

Reads RUN/cohort, RUN/evaluator and the sample folder of every method of the table
(namd.config.methods: RUN/samples, RUN/samples_no_align, ...; a missing one gives a "not run" row),
writes RUN/eval/metrics.json (schema: docs/metrics-schema.md; its growth block comes from
namd.evaluation.growth), RUN/eval/per_nodule.csv and RUN/eval/run_info.json.
With RUN/evaluator/calibration.json every image row's probabilities are calibrated per sample
before the mean over K (metrics.json "probability" says which; its calibration block holds
Brier, ECE and reliability points, raw and calibrated: namd.evaluation.calibration_metrics).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from namd.clinical.rows import readout_block
from namd.cohort.known_futures import read_known_futures
from namd.cohort.store import Cohort
from namd.config import NamdConfig, methods
from namd.evaluation import baselines, fidelity, gap_closure, growth, metrics, quality, variance
from namd.evaluation.baseline_use import BASELINE_USE_FILE
from namd.evaluation.calibration_metrics import calibration_block
from namd.evaluation.freshness import evaluated_inputs
from namd.evaluation.known_futures import known_futures_scores, measure_futures
from namd.evaluation.measure import Measurements, measure_rows
from namd.evaluation.rows import (
    COPY_REFERENCE,
    generated,
    image_rows,
    listed,
    quality_rows,
    rows,
    vae_of,
)
from namd.evaluation.sample_folder import load_samples
from namd.evaluation.schema import SCHEMA_VERSION
from namd.models.calibration import Calibration, calibration_status
from namd.models.device import resolve_device
from namd.models.evaluator import MalignancyViT, load_evaluator, predict
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_json, atomic_write_text, progress
from namd.run.readers import read_json

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """Probabilities of one table row: runs (K, N), or a reason it was not run."""

    runs: np.ndarray | None = None
    status: str = "ok"
    info: dict = field(default_factory=dict)


def test_pairs(cohort: Cohort, split: str) -> tuple[pd.DataFrame, int]:
    """Labelled pairs of the evaluated split and how many unlabelled pairs were left out."""
    pairs = cohort.pairs(split)
    unlabelled = int(pairs["label"].isna().sum())
    if unlabelled:
        log.warning("%s: %d pair(s) of split %s have no label and are left out", cohort.path,
                    unlabelled, split)
    pairs = pairs[pairs["label"].notna()].reset_index(drop=True)
    y = pairs["label"].astype(int).to_numpy()
    if len(pairs) == 0 or y.min() == y.max():
        raise ValueError(f"{cohort.path}: split {split!r} needs labelled pairs of both classes, "
                         f"has {int((y == 0).sum())} benign and {int((y == 1).sum())} malignant")
    return pairs, unlabelled


def evaluator_scores(model: MalignancyViT, crops: np.ndarray, window: tuple[float, float],
                     batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and features of crops (N, K, H, W) -> (K, N) and (N, K, d)."""
    n, k = crops.shape[:2]
    probs, feats = predict(model, crops.reshape(n * k, *crops.shape[2:]), window, batch, True)
    return probs.reshape(n, k).T, feats.reshape(n, k, -1)


def paired_test(y: np.ndarray, score: np.ndarray, reference: np.ndarray, cfg: NamdConfig) -> dict:
    """DeLong on AUROC (bootstrap when a class is too small) and a paired bootstrap on AUPRC."""
    ev = cfg.eval
    try:
        test = metrics.delong_test(y, score, reference)
    except ValueError:  # fewer than two nodules in a class: fall back to the bootstrap
        test = metrics.paired_bootstrap_test(y, score, reference, "auroc", ev.bootstrap, ev.seed)
        test["delta_auroc"] = test.pop("delta")
    auprc = metrics.paired_bootstrap_test(y, score, reference, "auprc", ev.bootstrap, ev.seed)
    return {**test, "delta_auprc": auprc["delta"], "p_value_auprc": auprc["p_value"],
            "test_auprc": "paired bootstrap"}


def row_entry(name: str, scored: Scored, y: np.ndarray, reference: np.ndarray,
              cfg: NamdConfig, copy_reference: np.ndarray | None = None,
              namd_mean: np.ndarray | None = None) -> dict:
    """One row of metrics.json (metrics, interval and paired tests against the real baseline,
    for generated rows against the VAE copy of the baseline, and for the ablations against
    NAMD: what the record and L_align add, tested on the same nodules)."""
    entry: dict = {"name": name, "description": rows()[name], "status": scored.status}
    if scored.runs is None:
        return {**entry, "k": None, "auroc": None, "auprc": None, **scored.info}
    ev = cfg.eval
    entry.update(metrics.score_block(y, scored.runs, ev.bootstrap, ev.ci, ev.seed))
    mean = scored.runs.mean(axis=0)
    if name != "real_baseline":
        entry["vs_real_baseline"] = paired_test(y, mean, reference, cfg)
    if name in generated() and copy_reference is not None:
        entry[f"vs_{COPY_REFERENCE}"] = paired_test(y, mean, copy_reference, cfg)
    if name in generated() and name != methods.REFERENCE and namd_mean is not None:
        entry["vs_namd"] = paired_test(y, mean, namd_mean, cfg)
    return {**entry, **scored.info}


def clean(obj):
    """NaN and infinities -> None, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def nodule_table(pairs: pd.DataFrame, scored: dict[str, Scored],
                 per_crop: dict[str, dict[str, np.ndarray]], real_diameter: np.ndarray) -> pd.DataFrame:
    """per_nodule.csv: p_<row> per single-run row, p_<variant>_k<NN> per sample run of the
    generated rows, their mean/variance/error/group over K, and per-crop quality means."""
    table = pairs[["pair_id", "patient_id", "label"]].copy()
    table["label"] = table["label"].astype(int)
    table["real_followup_diameter_mm"] = real_diameter
    for name, s in scored.items():
        if s.runs is None:
            continue
        if name not in generated():
            table[f"p_{name}"] = s.runs[0]
            continue
        for j, run in enumerate(s.runs, start=1):
            table[f"p_{name}_k{j:02d}"] = run
        stats = variance.per_nodule(s.runs.T, table["label"].to_numpy())
        for col in ("mean_prob", "variance", "error", "group"):
            table[f"{name}_{col}"] = stats[col].to_numpy()
    for name, arrays in per_crop.items():
        for measure in ("mae_hu", "ssim", "diameter_mm", "diameter_error_mm"):
            table[f"{name}_{measure}_mean"] = arrays[measure].mean(axis=1)
    return table


@dataclass
class Inputs:
    """What every part of the evaluation shares: labelled pairs, their real crops, the evaluator."""

    pairs: pd.DataFrame
    y: np.ndarray
    real: dict[str, np.ndarray]  # "baseline" / "followup" -> (N, H, W) HU
    spacing: np.ndarray
    model: MalignancyViT
    window: tuple[float, float]
    batch: int
    vae_copies: dict[str, np.ndarray] = field(default_factory=dict)  # VAE folder -> (N, H, W) HU


def score_images(run: RunDir, cohort: Cohort, inp: Inputs, split: str
                 ) -> tuple[dict[str, Scored], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Evaluator probabilities of the image rows; features (N, K, d) and crops (N, K, H, W) of
    the rows whose images are compared with the real follow-up."""
    scored: dict[str, Scored] = {}
    feats: dict[str, np.ndarray] = {}
    crops_of: dict[str, np.ndarray] = {}
    for kind in ("baseline", "followup"):
        p, feats[kind] = evaluator_scores(inp.model, inp.real[kind][:, None], inp.window, inp.batch)
        scored[f"real_{kind}"] = Scored(p)
    for name, folder in progress(generated().items(), desc="evaluate methods", unit="method"):
        if not listed(name, () if not run.stage(folder).exists() else (name,)):
            continue  # a compared method this run did not sample has no row
        crops, status, info = load_samples(run.stage(folder), inp.pairs, split, cohort.crop_size)
        if crops is None:
            scored[name] = Scored(status=status)
            continue
        p, feats[name] = evaluator_scores(inp.model, crops, inp.window, inp.batch)
        scored[name] = Scored(p, info={"samples": folder, "sampling_seed": info.get("seed")})
        crops_of[name] = crops
    scored["copy_baseline"] = Scored(scored["real_baseline"].runs)  # identity "generator"
    crops_of["copy_baseline"], feats["copy_baseline"] = inp.real["baseline"][:, None], feats["baseline"]
    reference_vae = vae_of(methods.REFERENCE) or "vae"
    copy = inp.vae_copies.get(reference_vae)
    if copy is None:
        scored[COPY_REFERENCE] = Scored(status=f"not run: {run.stage(reference_vae)} not finished")
    else:
        p, feats[COPY_REFERENCE] = evaluator_scores(inp.model, copy[:, None], inp.window, inp.batch)
        scored[COPY_REFERENCE], crops_of[COPY_REFERENCE] = Scored(p), copy[:, None]
    return scored, feats, crops_of


def check_finite_scores(scored: dict[str, Scored], evaluator_dir: Path) -> None:
    """Refuse, in one line, a row whose probabilities hold NaN or inf: the image rows' come from
    the evaluator (their crops were checked finite), so its weights are named; a clinical row
    names itself. Every number metrics.json reports is then computed from finite scores."""
    for name, s in scored.items():
        if s.runs is None or np.isfinite(s.runs).all():
            continue
        bad = f"{int((~np.isfinite(s.runs)).sum())} of {s.runs.size}"
        if name in image_rows():
            raise RunFileError(evaluator_dir, f"the evaluator gives NaN or inf probabilities "
                               f"({bad}) on the crops of row {name}: its weights are damaged or "
                               "diverged", writer="evaluator")
        raise ValueError(f"row {name}: {bad} of its scores are NaN or inf (its inputs in "
                         f"{evaluator_dir.parent / 'cohort'} or its fit) — check the cohort's "
                         "records, then re-run `namd evaluate`")


def calibrate(scored: dict[str, Scored], calibration: Calibration | None) -> dict[str, np.ndarray]:
    """Calibrate every image row's probabilities per sample, in place (before any mean over K);
    returns the raw runs (K, N) of those rows."""
    raw = {n: scored[n].runs for n in image_rows() if n in scored and scored[n].runs is not None}
    if calibration is not None:
        for name, runs in raw.items():
            scored[name].runs = calibration.apply(runs)
    return raw


def vae_copies(run: RunDir, baselines_hu: np.ndarray, window: tuple[float, float]) -> dict[str, np.ndarray]:
    """The baselines through each finished VAE stage of the run (folder name -> (N, H, W) HU)."""
    return {name: fidelity.vae_roundtrip(run.stage(name), baselines_hu, window)
            for name in vae_folders() if run.is_done(name)}


def vae_folders() -> list[str]:
    """The VAE folders the generated rows decode with, each once."""
    return sorted({vae for name in generated() if (vae := vae_of(name)) is not None})


def baseline_use_blocks(run: RunDir) -> dict:
    """What the baseline buys, per method with a conditional U-Net: the cond stage's
    baseline_use.json, or a status."""
    out = {}
    for m in methods.METHODS.values():
        if "cond" not in m.uses:
            continue
        path = run.stage(m.uses["cond"]) / BASELINE_USE_FILE
        if not path.is_file():
            out[m.name] = {"status": f"not run: {path} not found"}
            continue
        out[m.name] = read_json(path, path.parent.name)
    return out


def growth_variants(run: RunDir, inp: Inputs, scored: dict[str, Scored],
                    crops_of: dict[str, np.ndarray]) -> dict[str, growth.Variant]:
    """Every generated variant's samples and its VAE's copies of the baselines, or its status."""
    out = {}
    for name, folder in generated().items():
        if name not in scored:
            continue
        vae = vae_of(name)
        copy, status = inp.vae_copies.get(vae) if vae else None, "ok"
        if name not in crops_of:
            status = scored[name].status
        elif vae is None:
            status = "not computed: the method has no VAE (its copy of the baselines is the reference size)"
        elif copy is None:
            status = (f"not computed: {run.stage(vae)} is not finished (its copy of the "
                      "baselines is the reference size)")
        out[name] = growth.Variant(crops_of.get(name), copy, status, folder, vae or "")
    return out


def image_quality_blocks(inp: Inputs, scored: dict[str, Scored], feats: dict[str, np.ndarray],
                         crops_of: dict[str, np.ndarray], config: NamdConfig | None = None,
                         measured: dict[str, Measurements] | None = None) -> tuple[dict, dict]:
    """The image_quality block of every row of quality_rows(), and per-crop arrays. The LPIPS
    and FID networks that `config` names (eval.lpips_weights / vae.lpips_weights,
    eval.fid_weights) are loaded once, before the first row, on the default device (the
    evaluator's); without a config neither is computed (their blocks say why). `measured`:
    measure_rows() of the rows and of "real_followup", when already computed."""
    from namd.evaluation import perceptual

    blocks: dict = {}
    per_crop: dict[str, dict[str, np.ndarray]] = {}
    nets = perceptual.load_networks(config, None, inp.batch)
    for name in progress([n for n in quality_rows() if n in scored], desc="image quality", unit="row"):
        if name not in crops_of:
            blocks[name] = {"status": scored[name].status}
            continue
        diameters = None
        if measured is not None and name in measured:
            diameters = measured[name].longest_mm, measured["real_followup"].longest_mm[:, 0]
        blocks[name], per_crop[name] = quality.image_quality(
            crops_of[name], inp.real["followup"], inp.spacing, inp.window, feats[name],
            feats["followup"][:, 0], nets, diameters)
        blocks[name]["status"] = "ok"
    return blocks, per_crop


def evaluate_run(run: RunDir, config: NamdConfig, split: str = "test") -> dict:
    """Compute every row, image quality and the variance analysis; write RUN/eval."""
    cohort = Cohort(run.require("cohort", "evaluate"))
    inputs = evaluated_inputs(run)  # before reading: a stage re-run meanwhile makes it stale
    for stage in ("evaluator", *vae_folders()):  # the judge and the VAE copies' VAEs
        run.agree(config, stage)
    model, window, ev_info = load_evaluator(run.stage("evaluator"))  # says how to train it
    calibration, cal_status = calibration_status(run.stage("evaluator"))
    model = model.to(resolve_device(None))
    pairs, unlabelled = test_pairs(cohort, split)
    inp = Inputs(pairs, pairs["label"].astype(int).to_numpy(),
                 {kind: cohort.images(pairs[f"{kind}_index"]) for kind in ("baseline", "followup")},
                 pairs["pixel_spacing_mm"].to_numpy(dtype=np.float64), model, window,
                 config.sampling.max_batch)
    inp.vae_copies = vae_copies(run, inp.real["baseline"], window)
    scored, feats, crops_of = score_images(run, cohort, inp, split)
    check_finite_scores(scored, run.stage("evaluator"))  # before any fit uses them
    raw = calibrate(scored, calibration)
    reference = scored["real_baseline"].runs[0]
    scored.update(clinical_rows(cohort, pairs, split, reference, model, window, inp.batch,
                                config.eval.seed, calibration))
    check_finite_scores(scored, run.stage("evaluator"))
    copy_ref = scored[COPY_REFERENCE].runs
    ref = scored[methods.REFERENCE].runs
    namd_mean = None if ref is None else ref.mean(axis=0)
    entries = [row_entry(name, scored[name], inp.y, reference, config,
                         None if copy_ref is None else copy_ref[0], namd_mean)
               for name in progress([n for n in rows() if n in scored], desc="metrics", unit="row")]
    compared = {**crops_of, "real_followup": inp.real["followup"][:, None]}  # (N, K, H, W) HU
    measured = measure_rows(compared, inp.spacing)  # once, for quality, growth, futures, the csv
    image_quality, per_crop = image_quality_blocks(inp, scored, feats, crops_of, config, measured)
    var_rows = {n: variance.variance_summary(scored[n].runs.T, inp.y)
                for n in generated() if n in scored and scored[n].runs is not None}
    copies = {n: inp.vae_copies[v] for n in generated()
              if n in scored and (v := vae_of(n)) is not None and v in inp.vae_copies}
    known, ids = read_known_futures(cohort.path), inp.pairs["pair_id"].tolist()
    future_m = measure_futures(known, ids, compared, inp.spacing)  # once, for the block and the readout
    futures, futures_per_nodule = known_futures_scores(
        known, ids, compared, inp.spacing,
        window, methods.REFERENCE, config.eval, measured, future_m)
    result = clean({
        "schema_version": SCHEMA_VERSION, "split": split, "n_test": int(len(inp.y)),
        "n_malignant": int(inp.y.sum()), "n_unlabelled_excluded": unlabelled,
        "k": int(ref.shape[0]) if ref is not None else config.sampling.k,
        "probability": calibration.describe() if calibration is not None else "raw",
        "bootstrap": {"n": config.eval.bootstrap, "level": config.eval.ci, "stratified": True,
                      "seed": config.eval.seed,
                      "generated_rows_ci_of": "the mean probability over the K runs"},
        "evaluator": {"val_auroc": ev_info.get("val_auroc"), "best_step": ev_info.get("best_step"),
                      "selection": ev_info.get("selection")},
        "rows": entries,
        "image_quality": image_quality,
        "fidelity": fidelity.fidelity_blocks(
            {n: c for n, c in crops_of.items() if n in copies}, inp.real["followup"], copies,
            window),
        "baseline_use": baseline_use_blocks(run),
        "growth": growth.growth_block(inp.real["baseline"], inp.real["followup"], inp.spacing,
                                      inp.y, growth_variants(run, inp, scored, crops_of),
                                      config.eval, growth.sizes_of(measured)),
        "known_futures": futures,
        "readout": readout_block(cohort, inp.pairs, {n: crops_of[n] for n in generated() if n in crops_of},
                                 measured, known, config.readout, future_m),
        "gap_closure": gap_closure.gap_closure_block(inp.y, scored, config.eval),
        "variance": {"method": methods.REFERENCE,
                     **(var_rows.get(methods.REFERENCE) or {"status": scored[methods.REFERENCE].status})},
        "variance_other_methods": {n: v for n, v in var_rows.items() if n != methods.REFERENCE},
        "calibration": calibration_block(calibration, cal_status, inp.y, raw,
                                         {n: scored[n].runs for n in raw},
                                         {n: scored[n].status for n in image_rows() if n in scored}),
    })
    out = run.stage("eval")
    table = nodule_table(pairs, scored, per_crop, measured["real_followup"].longest_mm[:, 0])
    table = pd.concat([table, pd.DataFrame(futures_per_nodule, index=table.index)], axis=1)
    atomic_write_text(out / "per_nodule.csv", table.to_csv(index=False))
    atomic_write_json(out / "metrics.json", result)
    run.mark_done("eval", config, config.eval.seed, split=split,
                  outputs=["metrics.json", "per_nodule.csv"], inputs=inputs)
    return result


def clinical_rows(cohort: Cohort, pairs: pd.DataFrame, split: str, baseline_prob: np.ndarray,
                  model: MalignancyViT, window: tuple[float, float], batch: int,
                  seed: int, calibration: Calibration | None = None) -> dict[str, Scored]:
    """The brock, ehr_logistic and baseline_plus_ehr rows as Scored entries (the validation
    baselines' probabilities calibrated like `baseline_prob`)."""
    train, val = cohort.pairs("train"), cohort.pairs("val")
    train, val = train[train["label"].notna()], val[val["label"].notna()]
    val_prob = None
    if split != "val" and len(val):
        val_prob = predict(model, cohort.images(val["baseline_index"]), window, batch)[0]
        val_prob = calibration.apply(val_prob) if calibration is not None else val_prob
    out = baselines.clinical_scores(train, val, pairs, val_prob, baseline_prob, seed)
    scored = {}
    for name, item in out.items():
        info = {k: v for k, v in item.items() if k not in ("score", "status")}
        if "score" in item:
            scored[name] = Scored(np.asarray(item["score"])[None], info=info)
        else:
            scored[name] = Scored(status=item["status"], info=info)
    return scored
