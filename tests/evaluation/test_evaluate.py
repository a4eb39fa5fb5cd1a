"""`namd evaluate` end to end on a tiny cohort, a tiny evaluator and fake sample folders that
follow the sampling stage's file contract exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from namd.cli.main import main
from namd.cohort.ehr import EHR
from namd.cohort.store import Cohort, CohortWriter
from namd.config import TrainConfig, load_config
from namd.evaluation import evaluate
from namd.models.vae import build_vae, save_trained_vae
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_json
from namd.training import evaluator as evaluator_stage

SIZE, K = 32, 3
SPLITS = ("train",) * 6 + ("val",) * 2 + ("test",) * 2
ROW_NAMES = ["real_baseline", "real_followup", "namd", "no_align", "null_context",
             "copy_baseline", "vae_copy_baseline", "brock", "ehr_logistic", "baseline_plus_ehr"]


def _crop(rng, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    return (np.where(np.hypot(yy, xx) <= radius, 0.0, -850.0)
            + rng.normal(scale=30, size=(SIZE, SIZE))).astype(np.float32)


def _cohort(path, n_pairs: int = 100) -> Cohort:
    """Malignant nodules grow (the follow-up is more telling than the baseline)."""
    rng = np.random.default_rng(0)
    writer = CohortWriter(path, crop_size=SIZE, pixel_spacing_mm=0.7, source="test")
    for i in range(n_pairs):
        label = int(i % 4 == 0)
        radius = rng.uniform(2.5, 5.0)
        ehr = EHR(SCT_LONG_DIA=2 * radius * 0.7, SCT_PERP_DIA=1.5 * radius * 0.7, age=55.0 + i % 20,
                  gender=1 + i % 2, SCT_MARGINS=1 if i % 7 == 0 else 2,
                  diagemph=None if i % 9 == 0 else i % 2)
        for kind, r in (("baseline", radius), ("followup", radius * (1.8 if label else 1.0))):
            writer.add(_crop(rng, r), patient_id=f"p{i}", nodule_id="1", kind=kind,
                       split=SPLITS[i % len(SPLITS)], label=label, ehr=ehr, pair_id=f"pair{i}",
                       timepoint=int(kind == "followup"))
    return Cohort(writer.close())


def _write_samples(folder, cohort: Cohort, crops: np.ndarray, split: str = "test",
                   complete: bool = True, shuffle: bool = True) -> None:
    """A sample folder by the contract: samples.npy (N, K, H, W) HU, index.csv, run_info.json."""
    pairs = cohort.pairs(split)
    index = pairs[["pair_id", "patient_id", "split", "label", "baseline_index", "followup_index"]]
    order = np.random.default_rng(1).permutation(len(index)) if shuffle else np.arange(len(index))
    folder.mkdir(parents=True)
    np.save(folder / "samples.npy", crops[order].astype(np.float32))
    index.iloc[order].to_csv(folder / "index.csv", index=False)
    atomic_write_json(folder / "run_info.json", {"complete": complete, "seed": 23})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run with cohort, evaluator, NAMD samples (noisy real follow-ups), ablation samples
    (noisy baselines) and no null-context samples; evaluated through the CLI."""
    run = RunDir(tmp_path_factory.mktemp("run"))
    cohort = _cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=["eval.bootstrap=200"])
    config.evaluator = config.evaluator.model_copy(update={
        "width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.1,
        "train": TrainConfig(lr=2e-3, batch_size=16, max_steps=40, val_every=10, seed=3)})
    from namd.config import save_config

    save_config(config, run.path / "config.yaml")
    evaluator_stage.run_stage(config, run)
    vae_cfg = config.vae.model_copy(update={"block_out_channels": (8, 8, 8), "norm_num_groups": 4})
    save_trained_vae(build_vae(vae_cfg), run.stage("vae"), scale_factor=0.7)  # an untrained VAE
    run.mark_done("vae", config, 0)
    pairs = cohort.pairs("test")
    rng = np.random.default_rng(2)
    follow = cohort.images(pairs["followup_index"])[:, None]
    base = cohort.images(pairs["baseline_index"])[:, None]
    _write_samples(run.stage("samples"), cohort, follow + rng.normal(scale=60, size=(len(pairs), K, SIZE, SIZE)))
    _write_samples(run.stage("samples_no_align"), cohort, base + rng.normal(scale=60, size=(len(pairs), K, SIZE, SIZE)))
    assert main(["evaluate", "--run", str(run.path)]) == 0
    metrics = json.loads((run.stage("eval") / "metrics.json").read_text())
    table = pd.read_csv(run.stage("eval") / "per_nodule.csv", dtype={"pair_id": str})
    return run, cohort, metrics, table


def test_schema_rows_and_counts(evaluated):
    run, cohort, m, _ = evaluated
    test = cohort.pairs("test")
    assert m["n_test"] == len(test) and m["n_malignant"] == int(test["label"].sum())
    assert m["split"] == "test" and m["k"] == K
    assert [r["name"] for r in m["rows"]] == ROW_NAMES
    rows = {r["name"]: r for r in m["rows"]}
    for name, row in rows.items():
        if name == "null_context":
            assert row["status"].startswith("not run:") and row["auroc"] is None
            continue
        assert row["status"] == "ok", name
        for metric in ("auroc", "auprc"):
            block = row[metric]
            assert set(block) == {"mean", "std", "ci95"} and 0 <= block["mean"] <= 1
            lo, hi = block["ci95"]
            assert lo <= hi
        assert row["k"] == (K if name in ("namd", "no_align") else 1)
        if name in ("namd", "no_align"):
            assert 0 <= row["vs_vae_copy_baseline"]["p_value"] <= 1
        if row["k"] == 1:
            assert row["auroc"]["std"] == 0.0
        if name != "real_baseline":
            assert row["vs_real_baseline"]["test"] in ("DeLong", "paired bootstrap")
            assert 0 <= row["vs_real_baseline"]["p_value"] <= 1
    assert run.is_done("eval")
    assert json.loads(json.dumps(m)) == m  # strict JSON (no NaN)


def test_vae_copy_row_fidelity_and_baseline_use_blocks(evaluated):
    _, _, m, _ = evaluated
    assert m["image_quality"]["vae_copy_baseline"]["status"] == "ok"
    fid = m["fidelity"]
    assert list(fid) == ["namd"]  # the ablation's VAE (vae_no_align) is absent: no ceiling for it
    # NAMD's fake samples are noisy real follow-ups: each mean of K is nearest its own follow-up
    assert fid["namd"]["nearest_own_followup_share"] == 1.0
    assert fid["namd"]["mean_of_k_mae_hu"] < fid["namd"]["per_sample_mae_hu"]
    assert fid["namd"]["vae_copy_mae_hu"] == pytest.approx(
        m["image_quality"]["vae_copy_baseline"]["mae_hu"]["mean"])
    assert all(b["status"].startswith("not run") for b in m["baseline_use"].values())


def test_numbers_agree_with_per_nodule_probabilities(evaluated):
    _, _, m, table = evaluated
    rows = {r["name"]: r for r in m["rows"]}
    y = table["label"].to_numpy()
    for name in ("real_baseline", "real_followup", "brock", "ehr_logistic", "baseline_plus_ehr"):
        p = table[f"p_{name}"]
        assert rows[name]["auroc"]["mean"] == pytest.approx(roc_auc_score(y, p))
        assert rows[name]["auprc"]["mean"] == pytest.approx(average_precision_score(y, p))
    runs = [table[f"p_namd_k{k:02d}"] for k in range(1, K + 1)]
    per_run = [roc_auc_score(y, r) for r in runs]
    assert rows["namd"]["auroc"]["mean"] == pytest.approx(np.mean(per_run))
    assert rows["namd"]["auroc"]["std"] == pytest.approx(np.std(per_run))
    assert rows["namd"]["mean_prob_auroc"] == pytest.approx(roc_auc_score(y, np.mean(runs, axis=0)))
    np.testing.assert_allclose(table["namd_variance"], np.var(runs, axis=0), atol=1e-9)
    assert rows["copy_baseline"]["auroc"] == rows["real_baseline"]["auroc"]


def test_gap_closure_block_is_made_from_the_rows_scores(evaluated):
    _, _, m, _ = evaluated
    rows = {r["name"]: r for r in m["rows"]}
    block = m["gap_closure"]
    assert list(block["generated"]) == ["namd", "no_align", "null_context"]
    assert block["generated"]["null_context"] == {"status": rows["null_context"]["status"]}
    assert block["bootstrap"]["n"] == 200 and block["bootstrap"]["seed"] == m["bootstrap"]["seed"]
    base, follow = rows["real_baseline"]["auroc"]["mean"], rows["real_followup"]["auroc"]["mean"]
    for name in ("namd", "no_align"):
        entry = block["generated"][name]
        assert entry["k"] == K and entry["n_boot"] == 200
        assert entry["variant_auroc"] == pytest.approx(rows[name]["mean_prob_auroc"])
        assert entry["mean_run_auroc"] == pytest.approx(rows[name]["auroc"]["mean"])
        assert (entry["real_baseline_auroc"], entry["real_followup_auroc"]) == pytest.approx(
            (base, follow))
        if follow > base:
            assert entry["status"] == "ok"
            assert entry["point"] == pytest.approx((entry["variant_auroc"] - base) / (follow - base))
            assert 0 <= entry["n_boot_denominator_nonpositive"] < 200
            lo, hi = entry["ci95"]
            assert lo <= hi
        else:  # the tiny evaluator may not tell the follow-up apart: then no ratio
            assert entry["status"].startswith("not defined") and entry["point"] is None


def test_probabilities_are_calibrated_per_sample_and_the_block_says_how_well(evaluated):
    from namd.evaluation.calibration_metrics import brier, ece
    from namd.evaluation.rows import image_rows
    from namd.models.calibration import load_calibration
    from namd.models.evaluator import load_evaluator, predict

    run, cohort, m, table = evaluated
    assert m["probability"] == "calibrated (Platt, validation split)"
    cal = load_calibration(run.stage("evaluator"))
    model, window, _ = load_evaluator(run.stage("evaluator"))
    pairs = cohort.pairs("test").set_index("pair_id").loc[table["pair_id"]]
    raw = predict(model, cohort.images(pairs["baseline_index"].to_numpy()), window)[0]
    y = table["label"].to_numpy()
    np.testing.assert_allclose(table["p_real_baseline"], cal.apply(raw), atol=1e-6)
    rows = {r["name"]: r for r in m["rows"]}
    assert rows["real_baseline"]["auroc"]["mean"] == pytest.approx(roc_auc_score(y, raw))
    block = m["calibration"]
    assert block["method"] == "platt" and block["status"] == "ok" and block["bins"] == 10
    assert block["slope"] == pytest.approx(cal.slope) and block["n_pos"] == cal.n_pos
    assert list(block["rows"]) == list(image_rows())
    assert block["rows"]["null_context"]["status"].startswith("not run")
    base = block["rows"]["real_baseline"]
    assert base["raw"]["brier"] == pytest.approx(brier(y, raw), rel=1e-6)
    assert base["calibrated"]["brier"] == pytest.approx(brier(y, table["p_real_baseline"]), rel=1e-6)
    assert base["calibrated"]["ece"] == pytest.approx(ece(y, table["p_real_baseline"]), abs=1e-6)
    assert sum(p["n"] for p in base["raw"]["reliability"]) == len(y)
    namd = block["rows"]["namd"]  # the mean over K of per-sample calibrated probabilities
    assert namd["k"] == K
    assert namd["calibrated"]["brier"] == pytest.approx(brier(y, table["namd_mean_prob"]), rel=1e-6)
    assert namd["raw"]["brier"] != pytest.approx(namd["calibrated"]["brier"])


def test_image_quality_and_variance_blocks(evaluated):
    _, _, m, table = evaluated
    iq = m["image_quality"]
    assert iq["null_context"]["status"].startswith("not run:")
    for name in ("namd", "no_align", "copy_baseline"):
        block = iq[name]
        assert block["status"] == "ok"
        assert {"mae_hu", "psnr", "ssim", "frechet_evaluator", "diameter_error_mm"} <= set(block)
        assert isinstance(block["lpips"], str) and block["lpips"].startswith("not computed")
        assert isinstance(block["fid"], str) and block["fid"].startswith("not computed")
    # NAMD's fake samples are noisy real follow-ups; the ablation's are noisy baselines
    assert iq["namd"]["mae_hu"]["mean"] < iq["no_align"]["mae_hu"]["mean"]
    assert iq["namd"]["diameter_error_mm"]["mean"] < iq["copy_baseline"]["diameter_error_mm"]["mean"]
    assert iq["copy_baseline"]["mae_hu"]["std"] == 0.0
    var = m["variance"]
    assert var["method"] == "namd" and var["k"] == K
    assert [p["k"] for p in var["running_variance_vs_k"]] == list(range(1, K + 1))
    assert set(var["per_label"]) == {"0", "1"}
    assert "no_align" in m["variance_other_methods"]
    assert {"namd_mean_prob", "namd_group", "real_followup_diameter_mm"} <= set(table.columns)


def test_per_nodule_csv_is_what_the_figures_read(evaluated):
    from namd.evaluation.report import figures
    run, _, _, table = evaluated
    df = figures.load_per_nodule(run.stage("eval") / "per_nodule.csv")
    variants = figures.generated_variants(df)
    assert list(variants) == ["namd", "no_align"] and len(variants["namd"]) == K
    scores = figures.row_scores(df)
    np.testing.assert_allclose(scores["namd"], table["namd_mean_prob"])
    assert {"real_baseline", "real_followup", "brock", "baseline_plus_ehr"} <= set(scores)


def test_broken_samples_are_clear_errors(evaluated, tmp_path):
    run, cohort, _, _ = evaluated
    pairs = cohort.pairs("test")
    good = np.zeros((len(pairs), 2, SIZE, SIZE), np.float32)
    _write_samples(tmp_path / "ok", cohort, good)
    crops, status, _ = evaluate.load_samples(tmp_path / "ok", pairs, "test", SIZE)
    assert status == "ok" and crops.shape == (len(pairs), 2, SIZE, SIZE)
    _write_samples(tmp_path / "unfinished", cohort, good, complete=False)
    assert evaluate.load_samples(tmp_path / "unfinished", pairs, "test", SIZE)[1].startswith("not run")
    _write_samples(tmp_path / "wrong_size", cohort, np.zeros((len(pairs), 2, 16, 16)))
    with pytest.raises(ValueError, match="samples.npy: shape"):
        evaluate.load_samples(tmp_path / "wrong_size", pairs, "test", SIZE)
    _write_samples(tmp_path / "subset", cohort, good)
    index = pd.read_csv(tmp_path / "subset" / "index.csv", dtype=str)
    index.loc[0, "pair_id"] = "someone-else"
    index.to_csv(tmp_path / "subset" / "index.csv", index=False)
    with pytest.raises(ValueError, match="pair ids do not match"):
        evaluate.load_samples(tmp_path / "subset", pairs, "test", SIZE)
    val = cohort.pairs("val")
    assert "holds split" in evaluate.load_samples(tmp_path / "ok", val, "val", SIZE)[1]


def test_missing_evaluator_is_a_one_line_error(tmp_path, capsys):
    run = RunDir(tmp_path)
    _cohort(run.stage("cohort"), n_pairs=20)
    assert main(["evaluate", "--run", str(run.path)]) == 1
    assert "namd train evaluator" in capsys.readouterr().err
