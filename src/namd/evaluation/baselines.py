"""Clinical baselines that use no generated image (rows brock, ehr_logistic, baseline_plus_ehr).

They tell a reader how much of any gain of the generated follow-ups the EHR alone explains.
All work on `Cohort.pairs(split)` frames (one row per baseline/follow-up pair, baseline-year
EHR, so no follow-up information leaks into them).

- brock: the Brock full model (namd.cohort.brock) on the baseline EHR. The cohort does not record
  how many nodules a patient has, so nodule_count = 1 (the model's per-nodule default here); a
  missing longest diameter is filled with the train split's median diameter (counted in the row).
- ehr_logistic: a logistic regression on the 13 EHR fields fitted on the train pairs; continuous
  fields are median-imputed with missing indicators and standardised, categorical and binary
  fields are one-hot encoded with "missing" as its own category.
- baseline_plus_ehr: a logistic regression on two inputs, the evaluator's logit on the real
  baseline crop and the ehr_logistic logit, fitted on the validation pairs: the evaluator was
  trained on the train crops, so its train-split outputs are over-confident and would bias a
  combiner fitted there; both inputs are out-of-sample on the validation split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR, EHR_FIELDS, FAMILY
from namd.cohort.store import Cohort

CONTINUOUS = ("SCT_LONG_DIA", "SCT_PERP_DIA", "age")
CATEGORICAL = ("SCT_PRE_ATT", "SCT_EPI_LOC", "SCT_MARGINS", "gender", "diagemph", *FAMILY)
MISSING_CODE = -1  # the one-hot category of a missing categorical / binary field
LOGIT_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def labels(pairs: pd.DataFrame, where: str) -> np.ndarray:
    """0/1 labels of pairs, or a clear error naming the first unlabelled pair."""
    missing = pairs["label"].isna()
    if missing.any():
        raise ValueError(f"{where}: pair {pairs.loc[missing, 'pair_id'].iloc[0]!r} has no label")
    return pairs["label"].astype(int).to_numpy()


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def median_diameter(pairs: pd.DataFrame) -> float:
    """Median known baseline longest diameter (mm) of a set of pairs."""
    known = pairs["SCT_LONG_DIA"].dropna()
    if known.empty:
        raise ValueError("no pair of the train split has a longest diameter: the Brock score "
                         "cannot be computed")
    return float(known.median())


def brock_scores(pairs: pd.DataFrame, fill_diameter_mm: float) -> tuple[np.ndarray, int]:
    """Brock probabilities of pairs (baseline EHR) and how many diameters were filled in."""
    out, filled = np.empty(len(pairs)), 0
    for i, (_, row) in enumerate(pairs.iterrows()):
        ehr: EHR = Cohort.ehr(row)
        if ehr.SCT_LONG_DIA is None:
            ehr, filled = dataclasses.replace(ehr, SCT_LONG_DIA=fill_diameter_mm), filled + 1
        out[i] = brock_probability(ehr, nodule_count=1)
    return out, filled


def ehr_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """The 13 EHR fields as floats (NaN = missing), validated through the EHR class."""
    rows = [Cohort.ehr(row).as_dict() for _, row in pairs.iterrows()]
    return pd.DataFrame(rows, columns=list(EHR_FIELDS), dtype=float)


def ehr_model(seed: int) -> Pipeline:
    """Unfitted EHR logistic regression with missing indicators (see module docstring)."""
    continuous = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True,
                                                    keep_empty_features=True)),
                           ("scale", StandardScaler())])
    categorical = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CODE,
                                                     keep_empty_features=True)),
                            ("onehot", OneHotEncoder(handle_unknown="ignore"))])
    features = ColumnTransformer([("continuous", continuous, list(CONTINUOUS)),
                                  ("categorical", categorical, list(CATEGORICAL))])
    return Pipeline([("features", features),
                     ("logistic", LogisticRegression(max_iter=2000, random_state=seed))])


def fit_ehr_logistic(train_pairs: pd.DataFrame, seed: int) -> Pipeline:
    """The EHR logistic regression fitted on the train split's pairs."""
    y = labels(train_pairs, "train split")
    if len(np.unique(y)) < 2:
        raise ValueError("train split: the EHR logistic regression needs both classes")
    return ehr_model(seed).fit(ehr_table(train_pairs), y)


def ehr_logits(model: Pipeline, pairs: pd.DataFrame) -> np.ndarray:
    """Decision values (log-odds) of the EHR model for pairs."""
    return model.decision_function(ehr_table(pairs))


def fit_combiner(image_prob: np.ndarray, ehr_logit: np.ndarray, y: np.ndarray,
                 seed: int) -> LogisticRegression:
    """Logistic regression on [evaluator logit of the baseline crop, EHR logit]."""
    if len(np.unique(y)) < 2:
        raise ValueError("the combiner of baseline_plus_ehr needs both classes in its data")
    x = np.column_stack([logit(image_prob), ehr_logit])
    return LogisticRegression(random_state=seed).fit(x, y)


def combined_probability(model: LogisticRegression, image_prob: np.ndarray,
                         ehr_logit: np.ndarray) -> np.ndarray:
    """Malignancy probability of the image + EHR combiner."""
    return model.predict_proba(np.column_stack([logit(image_prob), ehr_logit]))[:, 1]


def clinical_scores(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                    val_image_prob: np.ndarray | None, test_image_prob: np.ndarray,
                    seed: int) -> dict[str, dict]:
    """Scores of the three clinical rows on `test`: {name: {"score" | "status", info...}}.

    `val_image_prob` is the evaluator on the validation pairs' baseline crops; None when the
    evaluated split is the validation split itself (the combiner cannot then be fitted apart).
    """
    out: dict[str, dict] = {}
    brock, filled = brock_scores(test, median_diameter(train))
    out["brock"] = {"score": brock, "n_diameter_filled": filled,
                    "fill_diameter_mm": median_diameter(train), "nodule_count": 1}
    model = fit_ehr_logistic(train, seed)
    test_ehr = ehr_logits(model, test)
    out["ehr_logistic"] = {"score": 1.0 / (1.0 + np.exp(-test_ehr)), "fitted_on": "train"}
    if val_image_prob is None:
        out["baseline_plus_ehr"] = {"status": "not run: the combiner is fitted on the validation "
                                    "split, which is the split evaluated"}
        return out
    y_val = labels(val, "val split")
    if len(np.unique(y_val)) < 2:
        out["baseline_plus_ehr"] = {"status": "not run: the validation split lacks one class"}
        return out
    combiner = fit_combiner(val_image_prob, ehr_logits(model, val), y_val, seed)
    out["baseline_plus_ehr"] = {
        "score": combined_probability(combiner, test_image_prob, test_ehr),
        "fitted_on": "val (EHR model on train)",
        "coefficients": {"image_logit": float(combiner.coef_[0, 0]),
                         "ehr_logit": float(combiner.coef_[0, 1]),
                         "intercept": float(combiner.intercept_[0])}}
    return out
