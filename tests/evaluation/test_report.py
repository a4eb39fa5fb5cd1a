"""`namd report`: the page renders every section with all inputs, and with none; missing inputs
name the command that makes them; numbers in the reading come from metrics.json."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from namd.cli.main import main
from namd.cohort.ehr import EHR
from namd.cohort.store import CohortWriter
from namd.config import VAEConfig, load_config, methods, save_config
from namd.evaluation.report.build import BUILDERS, build_report
from namd.evaluation.report.inputs import Context
from namd.evaluation.schema import SCHEMA_VERSION
from namd.models.vae import build_vae, save_trained_vae
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import write_run_info

CROP, K, N_TEST = 32, 6, 16
PNG = b"\x89PNG\r\n\x1a\n"
SECTION_KEYS = [key for key, _, _ in BUILDERS]


def _crop(rng: np.random.Generator, diameter: float) -> np.ndarray:
    """A bright disc (nodule) of the given diameter on lung background, in HU."""
    yy, xx = np.mgrid[:CROP, :CROP] - CROP / 2
    img = np.where(xx**2 + yy**2 <= (diameter / 1.4) ** 2, 40.0, -850.0)
    return (img + rng.normal(0, 30, img.shape)).astype(np.float32)


def make_cohort(path: Path, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """Test pairs (and train pairs) with diameter-dependent crops; returns test pair ids, labels."""
    writer = CohortWriter(path, crop_size=CROP, pixel_spacing_mm=0.7, source="test")
    pairs, labels = [], []
    for i in range(N_TEST + 2):
        split, label = ("train" if i >= N_TEST else "test"), int(i % 4 == 0)
        d = float(4 + 2 * i % 17)
        pid = f"p{i}"
        for kind, t, dd in (("baseline", 0, d), ("followup", 1, d * (1.3 if label else 1.0))):
            writer.add(_crop(rng, dd), patient_id=pid, nodule_id="1", kind=kind, split=split,
                       label=label, ehr=EHR(SCT_LONG_DIA=dd, age=60.0), pair_id=f"{pid}-1",
                       timepoint=t)
        if split == "test":
            pairs.append(f"{pid}-1")
            labels.append(label)
    writer.close()
    return pairs, labels


def stat(mean: float) -> dict:
    return {"mean": mean, "std": 0.02, "ci95": [mean - 0.06, mean + 0.06]}


def make_metrics(n_mal: int, namd: float = 0.80, base: float = 0.70,
                 no_align: float = 0.72) -> dict:
    """A metrics.json following the evaluate contract."""
    def row(name: str, auroc: float, gen: bool = False, p: float | None = 0.01) -> dict:
        r = {"name": name, "status": "ok", "k": K if gen else 1, "auroc": stat(auroc),
             "auprc": stat(auroc / 3)}
        if gen:
            r.update(mean_prob_auroc=auroc + 0.01, mean_prob_auprc=auroc / 3)
        if name != "real_baseline" and p is not None:
            r["vs_real_baseline"] = {"delta_auroc": auroc - base, "z": 2.0, "p_value": p,
                                     "test": "DeLong", "delta_auprc": (auroc - base) / 3,
                                     "p_value_auprc": 0.2, "test_auprc": "paired bootstrap"}
        return r

    rows = [row("real_baseline", base), row("real_followup", 0.85), row("namd", namd, True),
            row("no_align", no_align, True, p=0.4), row("null_context", 0.76, True),
            row("copy_baseline", 0.69), row("brock", 0.66), row("ehr_logistic", 0.68),
            {"name": "baseline_plus_ehr", "status": "not run: <b>no EHR</b>", "k": 1,
             "auroc": None, "auprc": None}]
    q = {"mae_hu": {"mean": 55.0, "std": 2.0}, "psnr": {"mean": 21.0, "std": 0.5},
         "ssim": {"mean": 0.61, "std": 0.01}, "frechet_evaluator": 3.2,
         "diameter_error_mm": {"mean": 1.1, "std": 0.2}, "lpips": "not computed: no weights",
         "fid": "not computed: no Inception weights"}
    copy = {**q, "mae_hu": {"mean": 80.0, "std": 3.0}, "ssim": {"mean": 0.5, "std": 0.02}}
    return {"schema_version": SCHEMA_VERSION, "n_test": N_TEST, "n_malignant": n_mal, "split": "test", "k": K,
            "bootstrap": {"n": 200, "level": 0.95, "stratified": True, "seed": 23,
                          "generated_rows_ci_of": "the mean probability over the K runs"},
            "rows": rows,
            "image_quality": {"namd": {"status": "ok", **q},
                              "copy_baseline": {"status": "ok", **copy},
                              "null_context": {"status": "not run: samples_null_context missing"}},
            "variance": {"variant": "namd", "k": K, "stable_k_mean_curve": 4},
            "variance_other_methods": {},
            "baseline_use": {"namd": BASELINE_USE,
                             "no_align": {"status": "not run: cond_no_align/baseline_use.json not found"}},
            "fidelity": {"namd": {"mean_of_k_mae_hu": 80.5, "vae_copy_mae_hu": 75.0,
                                  "mean_of_k_mae_to_vae_copy": 1.07, "nearest_own_followup_share": 0.91,
                                  "per_sample_mae_hu": 95.0, "spread_over_k_hu": 33.0, "k": K,
                                  "n": N_TEST}},
            "growth": GROWTH, "gap_closure": GAP_CLOSURE, "known_futures": KNOWN_FUTURES,
            "readout": READOUT,
            "probability": "calibrated (Platt, validation split)",
            "calibration": CALIBRATION}


def gap(benign: float, malignant: float, lo: float, hi: float) -> dict:
    """A label-gap entry of the growth block."""
    return {"benign_mean_mm": benign, "malignant_mean_mm": malignant,
            "difference_mm": malignant - benign, "difference_ci95": [lo, hi],
            "n_malignant": 4, "n_benign": 12}


GROWTH = {"size": "equivalent diameter 2 sqrt(A / pi) of the tissue above -400 HU within 10 mm "
                  "of the crop centre", "threshold_hu": -400.0, "radius_mm": 10.0,
          "bootstrap": {"n": 200, "level": 0.95, "seed": 23,
                        "resampled": "nodules, within each label"},
          "baseline_size": gap(8.0, 8.5, -1.0, 2.0), "real_followup": gap(0.1, 2.6, 1.9, 3.3),
          "generated": {"namd": {"status": "ok", "samples": "samples", "vae": "vae", "k": K,
                                 **gap(0.4, 1.9, 0.8, 3.0), "benign_minus_real_benign_mm": 0.3},
                        "no_align": {"status": "not run: samples_no_align not found"},
                        "null_context": {"status": "not run: samples_null_context not found"}}}


KNOWN_FUTURES = {"status": "not available: a test cohort; only a simulator knows other futures"}


# NAMD's mean-probability AUROC 0.81 (row: auroc + 0.01) between baseline 0.70, follow-up 0.85
GAP_CLOSURE = {"definition": "(AUROC(variant) - AUROC(real_baseline)) / (...)", "paper": 0.82,
               "bootstrap": {"n": 200, "level": 0.95, "seed": 23, "stratified": True,
                             "resampled": "nodules, within each label (paired)"},
               "generated": {"namd": {"status": "ok", "k": K, "real_baseline_auroc": 0.70,
                                      "real_followup_auroc": 0.85, "variant_auroc": 0.81,
                                      "point": 0.7333, "ci95": [0.31, 1.12], "n_boot": 200,
                                      "n_boot_denominator_nonpositive": 3,
                                      "mean_run_auroc": 0.80, "mean_run_point": 0.6667},
                             "no_align": {"status": "not defined: the real follow-up "
                                               "does not beat <i>the real baseline</i>",
                                               "k": K, "real_baseline_auroc": 0.70,
                                               "real_followup_auroc": 0.85, "variant_auroc": 0.73,
                                               "point": None, "ci95": None, "n_boot": 200,
                                               "n_boot_denominator_nonpositive": None,
                                               "mean_run_auroc": 0.72, "mean_run_point": None},
                             "null_context": {"status": "not run: samples_null_context not found"}}}


def _measures(brier: float, ece: float) -> dict:
    """Calibration measures of one score, with three reliability points."""
    points = [{"lo": b / 10, "hi": (b + 1) / 10, "n": 5, "mean_prob": b / 10 + 0.05,
               "frac_pos": min(1.0, b / 10 + 0.05 + ece)} for b in (1, 4, 8)]
    return {"brier": brier, "ece": ece, "reliability": points}


CALIBRATION = {"method": "platt", "status": "ok", "slope": 0.62, "intercept": -1.31, "n": 40,
               "n_pos": 8, "note": "1-D logistic regression on logit(p)", "bins": 10,
               "fitted_on": "labelled real crops of the validation split (all kinds)",
               "of": "the row's score",
               "rows": {"real_baseline": {"status": "ok", "k": 1, "raw": _measures(0.31, 0.27),
                                          "calibrated": _measures(0.17, 0.06)},
                        "real_followup": {"status": "ok", "k": 1, "raw": _measures(0.28, 0.22),
                                          "calibrated": _measures(0.14, 0.05)},
                        "namd": {"status": "ok", "k": K, "raw": _measures(0.30, 0.25),
                                 "calibrated": _measures(0.15, 0.04)},
                        "null_context": {"status": "not run: samples_null_context not found"}}}


def _readout_row(k: int, auroc: float) -> dict:
    """One row of the readout block as namd.clinical.rows.score_row gives it."""
    def prob(a: float) -> dict:
        return {"auroc": a, "brier": 0.2, "reliability": [{"mean_prob": 0.2, "frac_pos": 0.3, "n": 5},
                                                          {"mean_prob": 0.7, "frac_pos": 0.6, "n": 3}]}
    return {"status": "ok", "k": k, "n": 8, "not_measurable_share": 0.0, "kappa_linear": 0.5,
            "exact_agreement": 0.6, "growth": prob(auroc), "at_least_4a": prob(auroc - 0.1),
            "growth_recorded": {"auroc": auroc}, "brock": {"auroc_growth": 0.7, "auroc_at_least_4a": 0.6}}


READOUT = {"status": "ok", "n": 8, "version": "2022", "draws": 25,
           "rows": {"baseline_copy": _readout_row(1, 0.55), "namd": _readout_row(K, 0.61),
                    "real_followup": _readout_row(1, 0.97)}}


BASELINE_USE = {"n_pairs": 56, "loss_true": 0.03, "loss_shuffled": 0.12, "loss_prior": 0.07,
                "ratio": 0.25, "x0_nearest_own_baseline": 0.98,
                "bands": [{"t": [0, 100], "n": 10, "true": 0.2, "shuffled": 0.4, "prior": 0.26,
                           "ratio": 0.5}]}


def make_run(root: Path) -> RunDir:
    """A complete fake run: config, cohort, two tiny VAEs, samples, eval outputs, run_info files."""
    rng = np.random.default_rng(0)
    run = RunDir(root)
    config = load_config("tiny", overrides=[f"data.crop_size={CROP}"])
    root.mkdir(parents=True)
    save_config(config, root / "config.yaml")
    pairs, labels = make_cohort(run.stage("cohort"), rng)
    vae_cfg = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4)
    for seed, stage in ((0, "vae"), (1, "vae_no_align")):
        import torch

        torch.manual_seed(seed)
        save_trained_vae(build_vae(vae_cfg), run.stage(stage), 1.0)
        (run.stage(stage) / "report.json").write_text(json.dumps(
            {"stage": stage, "knn_r2_diameter": 0.7 - seed / 2, "split": "val"}))
        trained = methods.stage_config(config, methods.owner(stage)[1])  # as that stage trains
        write_run_info(run.stage(stage), trained, seed, stage=stage, complete=True)
    from namd.cohort.store import Cohort

    cohort = Cohort(run.stage("cohort"))
    test = cohort.pairs("test").set_index("pair_id").loc[pairs].reset_index()
    follow = cohort.images(test["followup_index"].to_numpy())
    samples = (follow[:, None] + rng.normal(0, 60, (len(pairs), K, CROP, CROP))).astype(np.float32)
    run.stage("samples").mkdir()
    np.save(run.stage("samples") / "samples.npy", samples)
    test[["pair_id", "patient_id", "split", "label", "baseline_index", "followup_index"]].to_csv(
        run.stage("samples") / "index.csv", index=False)
    y = np.array(labels, float)
    # as `namd evaluate` writes it: p_<v>_k01.. plus derived columns the report must ignore
    cols = {"pair_id": pairs, "patient_id": test["patient_id"], "label": labels,
            "real_followup_diameter_mm": rng.uniform(4, 20, len(y))}
    for name, sep in (("real_baseline", 0.3), ("real_followup", 0.5), ("copy_baseline", 0.3),
                      ("brock", 0.2), ("ehr_logistic", 0.2), ("baseline_plus_ehr", 0.3)):
        cols[f"p_{name}"] = np.clip(0.3 + sep * y + rng.normal(0, 0.2, len(y)), 0, 1)
    spread = rng.uniform(0.01, 0.3, len(y))  # per-nodule sampling noise, so variances differ
    for v, sep in (("namd", 0.45), ("no_align", 0.3), ("null_context", 0.35)):
        centre = 0.3 + sep * y + rng.normal(0, 0.2, len(y))
        centre[:2], spread[:2] = (0.05, 0.95), 0.01  # confidently incorrect: nodules 0 (L=1), 1
        centre[4], spread[4] = 0.9, 0.01               # confidently correct malignant
        spread[8] = 0.4                                # unsure malignant
        for k in range(1, K + 1):
            cols[f"p_{v}_k{k:02d}"] = np.clip(centre + spread * rng.normal(0, 1, len(y)), 0, 1)
        cols[f"{v}_mean_prob"], cols[f"{v}_group"] = centre, "unsure"
    run.stage("eval").mkdir()
    pd.DataFrame(cols).to_csv(run.stage("eval") / "per_nodule.csv", index=False)
    (run.stage("eval") / "metrics.json").write_text(json.dumps(make_metrics(int(y.sum()))))
    write_run_info(run.stage("eval"), config, 23, stage="eval", complete=True)
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[RunDir, str, list]:
    """The fake run and its rendered report (built once: t-SNE is the slow part)."""
    from threadpoolctl import threadpool_limits

    run = make_run(tmp_path_factory.mktemp("report") / "run")
    config = load_config(base=run.saved_config())
    with threadpool_limits(1):  # t-SNE's OpenMP threads crawl on the shared 2-core test machine
        path, sections = build_report(run, config)
    return run, path.read_text(), sections


def _statuses(html_text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)" data-status="(\w+)"', html_text))


def test_full_run_renders_every_section_with_embedded_figures(full_run):
    run, text, sections = full_run
    assert [s.key for s in sections] == SECTION_KEYS
    assert _statuses(text) == {key: "ok" for key in SECTION_KEYS}
    assert 'class="missing"' not in text and 'class="error"' not in text
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == 8
    assert all(base64.b64decode(e).startswith(PNG) for e in embedded)
    for name in ("roc_pr.png", "calibration_reliability.png", "fig2_tsne.png",
                 "fig3_error_variance.png", "fig3_examples.png", "fig3_methods.png",
                 "fig5_running_variance.png", "readout_reliability.png"):
        assert (run.stage("report") / name).read_bytes().startswith(PNG)
    assert "and 0." in text.split("latent t-SNE")[1][:200]  # both maps measured (with / without)
    assert "Stages" in text and "torch" in text
    latent = text.split('id="latent"')[1].split("</section>")[0]
    assert "<td>knn_r2_diameter</td><td class=num>0.7</td><td class=num>0.2</td>" in latent
    assert "No case for" not in text  # every (category, label) of Figure 3 has an example
    info = json.loads((run.stage("report") / "run_info.json").read_text())
    assert info["complete"] is True and info["sections"]["latent"] == "ok"
    assert run.is_done("report")


def test_reading_is_written_from_the_numbers(full_run):
    run, text, _ = full_run
    reading = text.split('id="reading"')[1].split("</section>")[0]
    # NAMD 0.80 vs baseline 0.70, DeLong p = 0.01; follow-up 0.85 -> 67% of the gap
    assert "0.800 (CI 0.740-0.860)" in reading and "higher by 0.100" in reading
    assert "CIs are 95% bootstrap confidence intervals" in reading
    assert "(paired DeLong test on the mean probability over K: difference +0.100, p = 0.01, " \
           "significant at the 5% level)" in reading
    assert "closes 67% of the gap" in reading
    assert "against full NAMD it is worse by 0.080" in reading
    assert "fewer than 30 malignant nodules" in reading
    assert "closer to the real follow-up" in reading          # MAE 55 < 80 HU
    assert "stays within 5% of its value at K = 6 from k = " in reading
    table = text.split('id="table"')[1].split("</section>")[0]
    assert "AUPRC: +0.033 (p = 0.2, paired bootstrap)" in table
    assert "not run: samples_null_context missing" in text.split('id="quality"')[1].split("</section>")[0]
    baseline = text.split('id="baseline"')[1].split("</section>")[0]
    assert "0.25" in baseline and "98%" in baseline and "0-100" in baseline  # ratio, x0, band
    assert "cond_no_align/baseline_use.json not found" in baseline and "0.91" in baseline
    calibrated = text.split('id="calibration"')[1].split("</section>")[0]
    assert "sigmoid(0.620 logit(p_raw) -1.310)" in calibrated and "8 malignant" in calibrated
    assert "<td class=num>0.310</td><td class=num>0.170</td><td class=num>0.270</td>" in calibrated
    assert "not run: samples_null_context not found" in calibrated
    grown = text.split('id="growth"')[1].split("</section>")[0]
    assert "+1.50 [+0.80, +3.00]" in grown and "predicts more growth for malignant" in grown
    # the same run with NAMD below the baseline says so
    metrics = make_metrics(4, namd=0.65, base=0.70, no_align=0.70)
    (run.stage("eval") / "metrics.json").write_text(json.dumps(metrics))
    try:
        from namd.evaluation.reading import reading as read

        sentences = " ".join(read(metrics, {}))
    finally:
        (run.stage("eval") / "metrics.json").write_text(json.dumps(make_metrics(4)))
    assert "lower by 0.050" in sentences and "closes 0% of the gap" in sentences
    assert "against full NAMD it is better by 0.050" in sentences
    assert "Below chance" not in sentences
    metrics["rows"][6]["auroc"]["mean"] = 0.4  # brock
    metrics["rows"][2]["auroc"]["mean"] = 0.7  # namd level with the real baseline
    sentences = " ".join(read(metrics, {}))
    assert "Below chance (AUROC < 0.5): Brock model (EHR only) (0.400)" in sentences
    assert "real baseline crop: the same to three decimals" in sentences


def test_gap_closure_section_shows_the_ratio_its_interval_and_the_three_aurocs(full_run):
    _, text, _ = full_run
    gap = text.split('id="gap"')[1].split("</section>")[0]
    assert "Gap closure: how much of the way from baseline to follow-up" in gap
    assert ("<td class=num>0.73 [0.31, 1.12]</td><td class=num>0.700</td><td class=num>0.810</td>"
            "<td class=num>0.850</td><td class=num>0.67</td><td class=num>3 of 200</td>") in gap
    assert "not defined: the real follow-up" in gap and "<i>" not in gap  # escaped
    assert "not run: samples_null_context not found" in gap
    assert ("NAMD's generated follow-ups close 0.73 of the AUROC gap between the real baseline "
            "(0.700) and the real follow-up (0.850) (95% CI 0.31 to 1.12): the interval contains "
            "the paper's 0.82 and excludes 0") in html.unescape(gap)


def test_gap_closure_sentence_reads_an_absent_or_undefined_ratio():
    from namd.evaluation.report.gap import gap_sentence

    undefined = {"generated": {"namd": {"status": "not defined: no gap"}}}
    assert "not available (not defined: no gap)" in gap_sentence(undefined)
    assert "the paper's 0.82" in gap_sentence({})
    low = {"paper": 0.82, "generated": {"namd": {
        "status": "ok", "point": 0.1, "ci95": [-0.2, 0.4], "real_baseline_auroc": 0.7,
        "real_followup_auroc": 0.8}}}
    assert "excludes the paper's 0.82 and contains 0" in gap_sentence(low)


def test_what_the_record_adds_reads_the_null_context_test_growth_and_the_clinical_yardstick():
    from namd.evaluation.report.gap import record_sentence

    def metrics(delta, p, gap_difference):
        return {"rows": [{"name": "namd"}, {"name": "null_context",
                                            "vs_namd": {"delta_auroc": delta, "p_value": p}}],
                "growth": {"generated": {"namd": {"difference_mm": 2.0}, "null_context": {
                    "vs_namd": {"gap_difference_mm": gap_difference, "ci95": [0.2, 1.4]}}}},
                "gap_closure": {"reference": {"ehr_logistic": {"point": 0.34}}}}
    steered = record_sentence(metrics(-0.08, 0.01, 0.8))
    assert "changes by -0.080 (paired DeLong p = 0.01)" in steered
    assert "by -0.80 mm [-1.40, -0.20]: 40% of it is the record's." in steered
    assert "Logistic regression on the EHR 0.34 of the gap" in steered
    assert steered.endswith("The record steers these follow-ups measurably.")
    assert "does not yet steer" in record_sentence(metrics(-0.08, 0.2, 0.8))
    assert "does not yet steer" in record_sentence(metrics(-0.08, 0.01, 0.4))  # 20% removed
    assert "the model without the record separates growth 25% more" in record_sentence(metrics(0.03, 0.1, -0.5))
    assert "not measured in this run" in record_sentence({"rows": []})


def test_text_from_files_is_escaped(full_run):
    _, text, _ = full_run
    assert "<b>no EHR</b>" not in text and "&lt;b&gt;no EHR&lt;/b&gt;" in text


def test_empty_run_renders_every_section_saying_what_is_missing(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    path, sections = build_report(run, load_config("tiny"))
    text = path.read_text()
    statuses = _statuses(text)
    assert list(statuses) == SECTION_KEYS
    assert all(statuses[k] == "missing" for k in SECTION_KEYS if k != "provenance")
    assert f"namd evaluate --run {run.path}" in text
    assert f"namd train vae --run {run.path}" in text
    assert "No stage of this run has a run_info.json yet" in text
    info = json.loads((run.stage("report") / "run_info.json").read_text())
    assert info["sections"]["table"] == "missing"


def test_partial_run_says_which_command_makes_the_missing_parts(full_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run[0].path, run.path)
    shutil.rmtree(run.stage("vae_no_align"))
    shutil.rmtree(run.stage("samples"))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        path, _ = build_report(run, load_config(base=run.saved_config()))
    text = path.read_text()
    statuses = _statuses(text)
    assert statuses["latent"] == "partial" and statuses["variance"] == "partial"
    assert f"namd train vae --run {run.path} --method no_align" in text
    assert f"namd sample --run {run.path} --split test" in text
    assert statuses["table"] == statuses["curves"] == statuses["running"] == "ok"
    assert not (run.stage("report") / "fig3_examples.png").exists()


def test_malformed_input_is_an_error_and_writes_no_report(full_run, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    shutil.copytree(full_run[0].path, run.path, ignore=shutil.ignore_patterns("vae*"))
    df = pd.read_csv(run.stage("eval") / "per_nodule.csv")
    df.loc[3, "label"] = 2
    df.to_csv(run.stage("eval") / "per_nodule.csv", index=False)
    before = (run.stage("report") / "index.html").read_text()
    with pytest.raises(RunFileError, match=r"per_nodule.csv: row 5: label must be 0 or 1.* — "
                                           r"re-run `namd evaluate --run"):
        build_report(run, load_config(base=run.saved_config()))
    assert main(["report", "--run", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "per_nodule.csv: row 5" in err
    assert (run.stage("report") / "index.html").read_text() == before  # the old page stays
    assert not list(run.path.rglob("*.partial"))  # no half-written report folder


def test_cli_writes_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("tiny"), run / "config.yaml")
    assert main(["report", "--run", str(run)]) == 0
    assert "<h1>NAMD report: run</h1>" in (run / "report" / "index.html").read_text()
    out = capsys.readouterr().out
    assert "report:" in out and "missing" in out
    assert main(["report", "--run", str(tmp_path / "nope")]) == 1


def test_metrics_of_another_schema_are_refused_naming_the_command(tmp_path):
    run = RunDir(tmp_path / "run")
    run.stage("eval").mkdir(parents=True)
    old = {**make_metrics(4), "schema_version": 1}
    (run.stage("eval") / "metrics.json").write_text(json.dumps(old))
    with pytest.raises(RunFileError, match=r"schema 1, written by another namd version.*"
                                           r"namd evaluate --run .*then `namd report`"):
        Context(run, load_config("tiny")).metrics()
