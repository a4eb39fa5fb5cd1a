"""Brier score, ECE and reliability points against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from namd.evaluation.calibration_metrics import (
    brier,
    calibration_block,
    ece,
    reliability,
    row_calibration,
)
from namd.evaluation.rows import image_rows
from namd.models.calibration import Calibration, not_fitted

Y = np.array([0, 0, 1, 1, 1])
P = np.array([0.05, 0.15, 0.12, 0.85, 1.0])


def test_brier_by_hand():
    # (0.05^2 + 0.15^2 + 0.88^2 + 0.15^2 + 0) / 5
    assert brier(Y, P) == pytest.approx((0.0025 + 0.0225 + 0.7744 + 0.0225) / 5)
    assert brier([0, 1], [0.0, 1.0]) == 0.0


def test_reliability_points_by_hand():
    points = reliability(Y, P)
    # bins: [0, .1): 0.05 | [.1, .2): 0.15, 0.12 | [.8, .9): 0.85 | [.9, 1]: 1.0 (1 in the last)
    assert [(p["lo"], p["hi"], p["n"]) for p in points] == [
        (0.0, 0.1, 1), (0.1, 0.2, 2), (0.8, 0.9, 1), (0.9, 1.0, 1)]
    assert points[1]["mean_prob"] == pytest.approx(0.135) and points[1]["frac_pos"] == 0.5
    assert points[0]["frac_pos"] == 0.0 and points[3]["mean_prob"] == 1.0


def test_ece_by_hand():
    # (1 * 0.05 + 2 * |0.5 - 0.135| + 1 * 0.15 + 1 * 0) / 5
    assert ece(Y, P) == pytest.approx((0.05 + 0.73 + 0.15) / 5)
    assert ece([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.0  # right on average in its one bin
    assert ece(Y, P, bins=1) == pytest.approx(abs(0.6 - P.mean()))


def test_row_and_block_measure_the_mean_over_k():
    runs = np.array([[0.0, 1.0], [0.2, 0.6]])  # K = 2 runs of 2 nodules: means 0.1, 0.8
    y = np.array([0, 1])
    entry = row_calibration(y, runs, runs / 2)
    assert entry["k"] == 2 and entry["raw"]["brier"] == pytest.approx((0.01 + 0.04) / 2)
    assert entry["calibrated"]["brier"] == pytest.approx((0.0025 + 0.36) / 2)
    cal = Calibration("platt", 0.5, -0.1, 40, 6, note="a note")
    statuses = {n: "ok" for n in image_rows()} | {"null_context": "not run: absent"}
    raw = {n: runs for n in image_rows() if n != "null_context"}
    block = calibration_block(cal, "ok", y, raw, {n: r / 2 for n, r in raw.items()}, statuses)
    assert block["method"] == "platt" and block["slope"] == 0.5 and block["n_pos"] == 6
    assert list(block["rows"]) == list(image_rows())
    assert block["rows"]["null_context"] == {"status": "not run: absent"}
    assert block["rows"]["namd"]["calibrated"]["brier"] == pytest.approx(entry["calibrated"]["brier"])
    none = calibration_block(not_fitted("platt", "no malignant crop"), "not fitted: no malignant crop",
                             y, raw, raw, statuses)
    assert none["method"] == "none" and none["status"].startswith("not fitted")
    assert none["rows"]["namd"]["calibrated"] is None and "slope" not in none
