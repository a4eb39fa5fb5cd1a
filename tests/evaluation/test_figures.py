"""The report's figures: per-nodule parsing, the statistics drawn, example selection, PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from namd.evaluation.report import figures as F
from namd.evaluation.report import figures_examples as FX
from namd.evaluation.variance import running_variance

PNG = b"\x89PNG\r\n\x1a\n"


def per_nodule(n: int = 40, k: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(int)
    cols = {"pair_id": [f"p{i}" for i in range(n)], "label": y,
            "p_real_baseline": np.clip(0.3 + 0.2 * y + rng.normal(0, 0.2, n), 0, 1),
            "p_brock": np.clip(0.2 + 0.1 * y + rng.normal(0, 0.1, n), 0, 1)}
    for v in ("no_align", "namd"):  # written out of table order on purpose
        for i in range(k):
            cols[f"p_{v}_k{i}"] = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, n), 0, 1)
    return pd.DataFrame(cols)


def test_load_per_nodule_checks_labels_probabilities_and_columns(tmp_path):
    path = tmp_path / "per_nodule.csv"
    df = per_nodule(8, 3)
    df.to_csv(path, index=False)
    assert F.load_per_nodule(path)["pair_id"].tolist() == df["pair_id"].tolist()
    bad = df.copy()
    bad.loc[2, "p_namd_k1"] = 1.5
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"per_nodule.csv: row 4, column p_namd_k1: probability"):
        F.load_per_nodule(path)
    df.drop(columns="label").to_csv(path, index=False)
    with pytest.raises(ValueError, match="column 'label' missing"):
        F.load_per_nodule(path)


def test_variants_are_found_from_columns_and_sorted_by_k():
    df = pd.DataFrame({"pair_id": ["a"], "label": [0], "p_namd_k10": [0.1], "p_namd_k2": [0.2],
                       "p_namd_k0": [0.3], "p_custom_k0": [0.4], "p_real_baseline": [0.5]})
    variants = F.generated_variants(df)
    assert list(variants) == ["namd", "custom"]
    assert variants["namd"] == ["p_namd_k0", "p_namd_k2", "p_namd_k10"]


def test_row_scores_use_the_mean_over_k_and_keep_missing_as_nan():
    df = per_nodule(10, 4)
    df.loc[0, [f"p_namd_k{i}" for i in range(4)]] = np.nan
    df.loc[1, "p_namd_k0"] = np.nan
    scores = F.row_scores(df)
    assert list(scores) == ["real_baseline", "namd", "no_align", "brock"]  # table order
    p = df[[f"p_namd_k{i}" for i in range(4)]].to_numpy()
    assert np.isnan(scores["namd"][0])
    assert scores["namd"][1] == pytest.approx(p[1, 1:].mean())
    np.testing.assert_allclose(scores["namd"][2:], p[2:].mean(1))


def test_error_and_variance():
    p = np.random.default_rng(1).uniform(size=(5, 9))
    labels = np.array([0, 1, 0, 1, 1])
    err, var = F.error_and_variance(p, labels)
    np.testing.assert_allclose(err, np.abs(labels - p.mean(1)))
    np.testing.assert_allclose(var, p.var(1))


def test_select_examples_follows_the_documented_rules():
    # rows:            0     1     2     3     4     5     6     7     8     9
    labels = np.array([0,    0,    0,    0,    1,    1,    1,    1,    0,    1])
    error = np.array([0.05, 0.10, 0.90, 0.50, 0.20, 0.85, 0.45, 0.30, 0.30, 0.95])
    var = np.array([0.001, 0.002, 0.001, 0.09, 0.003, 0.002, 0.08, 0.001, 0.05, 0.20])
    examples, absent = FX.select_examples(error, var, labels)
    got = {(e.category, e.label): e.row for e in examples}
    assert got == {("confidently correct", 0): 0, ("confidently correct", 1): 7,
                   ("unsure", 0): 3, ("unsure", 1): 6,
                   ("confidently incorrect", 0): 2, ("confidently incorrect", 1): 5}
    assert absent == []
    # row 9 (malignant, error .95) is incorrect but high-variance: not "confidently" so
    assert 9 not in got.values()
    # without incorrect predictions the category is reported absent, not filled
    examples, absent = FX.select_examples(np.minimum(error, 0.4), var, labels)
    assert "confidently incorrect, benign (L=0)" in absent
    assert all(e.category != "confidently incorrect" for e in examples)


def test_roc_pr_figure_reports_sklearn_areas_and_skips_single_class_rows():
    df = per_nodule()
    scores = F.row_scores(df)
    scores["one_class"] = np.where(df["label"] == 1, np.nan, 0.5)
    fig, areas = F.roc_pr_figure(df["label"].to_numpy(), scores)
    y = df["label"].to_numpy()
    assert areas["namd"]["auroc"] == pytest.approx(roc_auc_score(y, scores["namd"]))
    assert areas["brock"]["auprc"] == pytest.approx(average_precision_score(y, scores["brock"]))
    assert "skipped" in areas["one_class"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("NAMD (generated follow-up): AUROC") for t in legend)
    assert F.figure_png(fig).startswith(PNG)


def test_variance_figures_render():
    df = per_nodule()
    p, y = F.sample_matrix(df, "namd"), df["label"].to_numpy()
    assert F.figure_png(F.error_variance_figure(p, y, "namd", [(0, "C1")])).startswith(PNG)
    curves = {v: running_variance(F.sample_matrix(df, v)) for v in F.generated_variants(df)}
    fig = F.running_variance_figure(curves, k_used=12, max_curves=5)
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "number of samples K"
    assert len(fig.axes[0].lines) == 5 + 3  # 5 nodules, the mean, the legend proxy, K used


def test_examples_figure_maps(tmp_path):
    rng = np.random.default_rng(0)
    follow = rng.normal(-500, 100, (2, 16, 16)).astype(np.float32)
    samples = follow[:, None] + rng.normal(0, 50, (2, 5, 16, 16)).astype(np.float32)
    examples = [FX.Example("unsure", 0, 0, 0.5, 0.1),
                FX.Example("confidently incorrect", 1, 1, 0.9, 0.0)]
    fig = FX.examples_figure(examples, follow, follow, samples, (-1000.0, 400.0), "namd")
    img = fig.axes[3].images[0].get_array()  # row 0, pixel variance column
    np.testing.assert_allclose(img, samples[0].var(0), rtol=1e-5)
    assert F.figure_png(fig).startswith(PNG)
    with pytest.raises(ValueError, match="no example"):
        FX.examples_figure([], follow, follow, samples, (-1000.0, 400.0), "namd")


def test_load_samples_checks_shape_and_index(tmp_path):
    np.save(tmp_path / "samples.npy", np.zeros((3, 2, 8, 8), np.float32))
    index = pd.DataFrame({"pair_id": ["a", "b"], "baseline_index": [0, 2],
                          "followup_index": [1, 3]})
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match="2 rows but .*samples.npy holds 3 nodules"):
        FX.load_samples(tmp_path)
    with pytest.raises(FileNotFoundError):
        FX.load_samples(tmp_path / "nope")


def test_tsne_and_diameter_order():
    rng = np.random.default_rng(0)
    diameter = rng.uniform(4, 30, 60)
    latents = np.concatenate([diameter[:, None] + rng.normal(0, 0.5, (60, 1)),
                              rng.normal(0, 0.5, (60, 7))], 1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        emb = F.tsne_embed(latents, seed=0)
        again = F.tsne_embed(latents, seed=0)
    assert emb.shape == (60, 2)
    np.testing.assert_allclose(emb, again)
    ordered = F.diameter_neighbour_ratio(emb, diameter)
    shuffled = F.diameter_neighbour_ratio(emb, rng.permutation(diameter))
    assert ordered < 0.5 < shuffled
    diameter[:3] = np.nan
    fig = F.tsne_figure([("aligned", emb)], diameter, note="unaligned VAE missing")
    assert "diameter missing (n=3)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert F.figure_png(fig).startswith(PNG)
    with pytest.raises(ValueError, match="at least 4"):
        F.tsne_embed(latents[:3], seed=0)


def test_encode_crops_with_a_tiny_vae(tmp_path):
    import torch

    from namd.config import VAEConfig
    from namd.models.vae import build_vae, save_trained_vae

    torch.manual_seed(0)
    save_trained_vae(build_vae(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4)),
                     tmp_path / "vae", 1.0)
    hu = np.random.default_rng(0).normal(-600, 200, (5, 32, 32)).astype(np.float32)
    z = F.encode_crops(tmp_path / "vae", hu, (-1000.0, 400.0), batch=2)
    assert z.shape == (5, 4 * 16 * 16) and np.isfinite(z).all()
