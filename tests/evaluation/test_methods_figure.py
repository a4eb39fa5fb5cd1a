"""Figure 3, extended: which nodules it shows and that every method gets a column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from namd.evaluation.report import methods_figure as MF


def test_it_picks_per_label_the_largest_quartile_and_median_change_once_each():
    change = np.array([0.0, 5.0, 1.0, 9.0, 2.0, 3.0, 7.0, 4.0])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    picked = MF.pick_pairs(change, labels)
    assert picked[:3] == [3, 1, 2]  # malignant: 9 (max), 5 (quartile), median taken: next, 1
    assert picked[3] == 6 and len(picked) == len(set(picked)) == 6


def test_a_label_with_one_nodule_shows_it_once():
    assert MF.pick_pairs(np.array([1.0, 2.0]), np.array([1, 0])) == [0, 1]


def test_central_change_reads_the_centre_not_the_border():
    base = np.zeros((2, 16, 16), np.float32)
    follow = base.copy()
    follow[0, 7:9, 7:9] = 100.0  # the centre changes
    follow[1, 0, :] = 100.0      # only the border changes
    change = MF.central_change(base, follow)
    assert change[0] > 0 and change[1] == 0


def test_common_pairs_keeps_the_first_folders_order():
    a = pd.DataFrame({"pair_id": ["c", "a", "b"]})
    b = pd.DataFrame({"pair_id": ["a", "c"]})
    assert MF.common_pairs({"x": a, "y": b}) == ["c", "a"]


def test_the_figure_has_a_column_per_method_and_a_row_per_nodule():
    rng = np.random.default_rng(0)
    base, follow = rng.normal(size=(3, 16, 16)), rng.normal(size=(3, 16, 16))
    shown = {"namd": rng.normal(size=(3, 4, 16, 16)), "mcwgan": rng.normal(size=(3, 1, 16, 16))}
    fig = MF.methods_figure(base, follow, shown, np.array([1, 0, 0]), ["p1", "p2", "p3"],
                            (-1000.0, 400.0))
    assert len(fig.axes) == 3 * 4
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[3].endswith("its one follow-up") and titles[2].endswith("sample 1")
