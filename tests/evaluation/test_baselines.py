"""Clinical rows without generated images: Brock, EHR logistic regression, image + EHR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR, EHR_FIELDS
from namd.evaluation import baselines
from namd.evaluation.metrics import auroc


def _pairs(n: int, seed: int, missing: float = 0.0, noise: float = 1.0) -> pd.DataFrame:
    """Pairs frames like Cohort.pairs(): malignancy driven by diameter and spiculation."""
    rng = np.random.default_rng(seed)
    diameter = rng.uniform(4, 30, n)
    spiculated = rng.random(n) < 0.3
    risk = 0.25 * (diameter - 12) + 1.5 * spiculated + rng.normal(scale=noise, size=n)
    label = (risk > np.quantile(risk, 0.8)).astype(int)
    frame = pd.DataFrame({
        "pair_id": [f"p{seed}-{i}" for i in range(n)], "patient_id": [f"s{seed}-{i}" for i in range(n)],
        "nodule_id": ["1"] * n, "label": pd.array(label, dtype="Int64"),
        "SCT_PRE_ATT": rng.choice([1, 2, 3], n).astype(float),
        "SCT_EPI_LOC": rng.choice([1, 2, 3, 4, 5, 6], n).astype(float),
        "SCT_LONG_DIA": diameter, "SCT_PERP_DIA": diameter * 0.8,
        "SCT_MARGINS": np.where(spiculated, 1, rng.choice([2, 3], n)).astype(float),
        "age": rng.uniform(55, 75, n), "diagemph": rng.choice([0, 1], n).astype(float),
        "gender": rng.choice([1, 2], n).astype(float),
        **{f: rng.choice([0, 1], n, p=[0.9, 0.1]).astype(float)
           for f in ("famfather", "fammother", "fambrother", "famsister", "famchild")},
    })
    if missing:
        for f in ("SCT_PRE_ATT", "age", "diagemph", "famfather"):
            frame.loc[rng.random(n) < missing, f] = np.nan
    return frame


def test_brock_scores_match_the_model_and_fill_missing_diameters():
    pairs = _pairs(20, seed=0)
    pairs.loc[3, ["SCT_LONG_DIA", "SCT_PERP_DIA"]] = np.nan
    scores, filled = baselines.brock_scores(pairs, fill_diameter_mm=9.0)
    assert filled == 1
    row = pairs.iloc[5]
    ehr = EHR.from_mapping({f: row[f] for f in EHR_FIELDS})
    assert scores[5] == pytest.approx(brock_probability(ehr, nodule_count=1))
    filled_ehr = EHR.from_mapping({**{f: pairs.iloc[3][f] for f in EHR_FIELDS}, "SCT_LONG_DIA": 9.0})
    assert scores[3] == pytest.approx(brock_probability(filled_ehr))
    assert baselines.median_diameter(pairs) == pytest.approx(pairs["SCT_LONG_DIA"].median())


def test_ehr_logistic_learns_on_train_and_generalises_with_missing_values():
    train, test = _pairs(400, seed=1, missing=0.2), _pairs(200, seed=2, missing=0.2)
    model = baselines.fit_ehr_logistic(train, seed=0)
    y = test["label"].astype(int).to_numpy()
    assert auroc(y, baselines.ehr_logits(model, test)) > 0.8


def test_missing_indicators_carry_information():
    train, test = _pairs(400, seed=3), _pairs(200, seed=4)
    for frame in (train, test):  # the only signal left: age is recorded only for benign nodules
        frame["SCT_LONG_DIA"] = 10.0
        frame["SCT_PERP_DIA"] = 8.0
        frame["SCT_MARGINS"] = 2.0
        frame.loc[frame["label"] == 1, "age"] = np.nan
    model = baselines.fit_ehr_logistic(train, seed=0)
    assert auroc(test["label"].astype(int).to_numpy(), baselines.ehr_logits(model, test)) > 0.95


def test_combiner_uses_image_and_ehr():
    rng = np.random.default_rng(5)
    train, val, test = (_pairs(n, seed, noise=3.0) for n, seed in ((400, 6), (200, 7), (300, 8)))

    def image_prob(frame):  # an image signal independent of the EHR
        y = frame["label"].astype(int).to_numpy()
        return 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(scale=1.5, size=len(y)))))

    test_img = image_prob(test)
    out = baselines.clinical_scores(train, val, test, image_prob(val), test_img, seed=0)
    y = test["label"].astype(int).to_numpy()
    combined, ehr_only = out["baseline_plus_ehr"]["score"], out["ehr_logistic"]["score"]
    assert auroc(y, combined) > max(auroc(y, ehr_only), auroc(y, test_img)) + 0.02
    coef = out["baseline_plus_ehr"]["coefficients"]
    assert coef["image_logit"] > 0 and coef["ehr_logit"] > 0
    assert out["brock"]["n_diameter_filled"] == 0 and auroc(y, out["brock"]["score"]) > 0.7


def test_combiner_is_not_fitted_on_the_evaluated_split_and_errors_are_clear():
    train, val = _pairs(100, 9), _pairs(50, 10)
    out = baselines.clinical_scores(train, val, val, None, np.full(50, 0.5), seed=0)
    assert out["baseline_plus_ehr"]["status"].startswith("not run:")
    bad = train.copy()
    bad.loc[0, "label"] = pd.NA
    with pytest.raises(ValueError, match="has no label"):
        baselines.fit_ehr_logistic(bad, seed=0)
    with pytest.raises(ValueError, match="both classes"):
        baselines.fit_combiner(np.full(4, 0.5), np.zeros(4), np.zeros(4, int), seed=0)
    np.testing.assert_allclose(baselines.logit(np.array([0.5, 0.0, 1.0])),
                               [0.0, np.log(1e-6 / (1 - 1e-6)), np.log((1 - 1e-6) / 1e-6)])
