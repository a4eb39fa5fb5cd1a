"""Platt scaling of the evaluator's probability: fitted, applied, stored and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from namd.evaluation.calibration_metrics import brier, ece
from namd.models.calibration import (
    CALIBRATION_FILE,
    FEW_POSITIVES,
    calibration_status,
    fit_platt,
    load_calibration,
)
from namd.run.contract import RunFileError


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a true probability q, and a raw score that is q pushed towards 1 and
    made overconfident (logit 3 q + 2), as a pos_weight-trained classifier would be."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-(3 * z + 2))), y


def test_platt_calibrates_overconfident_scores_without_reordering_them():
    p_val, y_val = overconfident(2000, 0)
    cal = fit_platt(p_val, y_val)
    assert cal.fitted and cal.status == "ok" and cal.n == 2000 and cal.n_pos == int(y_val.sum())
    assert cal.slope == pytest.approx(1 / 3, abs=0.05) and cal.intercept == pytest.approx(-2 / 3, abs=0.15)
    p, y = overconfident(2000, 1)  # held-out data
    q = cal.apply(p)
    assert ece(y, q) < 0.5 * ece(y, p) and ece(y, q) < 0.04
    assert brier(y, q) < brier(y, p)
    assert roc_auc_score(y, q) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)  # monotonic
    grid = np.linspace(0, 1, 12).reshape(3, 4)  # any shape, 0 and 1 included
    out = cal.apply(grid)
    assert out.shape == (3, 4) and np.isfinite(out).all() and ((out > 0) & (out < 1)).all()
    assert cal.describe() == "calibrated (Platt, validation split)"


def test_few_positives_are_noted():
    p, y = overconfident(200, 2)
    keep = np.concatenate([np.flatnonzero(y == 1)[:5], np.flatnonzero(y == 0)])
    cal = fit_platt(p[keep], y[keep])
    assert cal.fitted and cal.n_pos == 5 and f"fewer than {FEW_POSITIVES}" in cal.note
    assert "fewer than" not in fit_platt(*overconfident(2000, 3)).note


def test_save_and_load_round_trip(tmp_path):
    cal = fit_platt(*overconfident(500, 4))
    cal.save(tmp_path / CALIBRATION_FILE)
    back = load_calibration(tmp_path)
    assert back == cal
    p = np.random.default_rng(5).random((4, 7))
    np.testing.assert_allclose(back.apply(p), cal.apply(p))
    stored = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert stored["method"] == "platt" and {"slope", "intercept", "n", "n_pos"} <= set(stored)
    assert load_calibration(tmp_path / "absent") is None
    assert calibration_status(tmp_path / "absent")[1].startswith("absent:")


@pytest.mark.parametrize("labels", [np.zeros(30, int), np.ones(30, int)])
def test_one_class_fits_nothing_and_says_why(tmp_path, labels):
    p = np.random.default_rng(6).random(30)
    cal = fit_platt(p, labels)
    assert not cal.fitted and cal.status.startswith("not fitted:")
    assert ("no malignant" if labels[0] == 0 else "no benign") in cal.status
    np.testing.assert_array_equal(cal.apply(p), p)
    assert cal.describe() == "raw"
    cal.save(tmp_path / CALIBRATION_FILE)
    assert load_calibration(tmp_path) is None  # stored, but nothing to apply
    assert calibration_status(tmp_path) == (None, cal.status)


@pytest.mark.parametrize("text", ["{\"method\": \"platt\", \"slo", "[]",
                                  '{"method": "platt", "n": 9, "n_pos": 2, "status": "ok", '
                                  '"slope": "x", "intercept": 0.1}',
                                  '{"method": "platt", "status": "ok"}'])
def test_damaged_file_is_a_run_file_error(tmp_path, text):
    (tmp_path / CALIBRATION_FILE).write_text(text)
    with pytest.raises(RunFileError, match="calibration.json"):
        load_calibration(tmp_path)
