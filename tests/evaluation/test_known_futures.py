"""The known-futures score: the energy distance (0 in expectation for the futures' own
distribution, positive otherwise), its ranking of rows on constructed futures of discs, the
paired intervals, and the statuses that pass through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from namd.cohort.known_futures import KnownFutures
from namd.config import EvalConfig
from namd.evaluation import known_futures as kf

SIZE, SPACING, M, H, K = 40, 0.7, 6, 4, 6
WINDOW = (-1000.0, 400.0)
EV = EvalConfig(bootstrap=400, seed=3)
FEATURES = ("diameter_mm", "density_hu", "image_hu")


def disc(radius: float, hu: float, rng: np.random.Generator) -> np.ndarray:
    """A nodule of `hu` and the given radius (px) at the centre of lung (-850 HU), with noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    img = np.where(np.hypot(yy, xx) <= radius, hu, -850.0) + rng.normal(0, 20, (SIZE, SIZE))
    return np.rint(img).astype(np.float32)


class Cohort:
    """N nodules, each with its own baseline radius and density; a future of nodule i grows by
    U(0.5, 3) px and densifies by U(0, 150) HU: every draw of `futures` comes from the same
    per-nodule distribution."""

    def __init__(self, n: int = 24, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.radius, self.hu = rng.uniform(3.0, 13.0, n), rng.uniform(-450.0, 40.0, n)
        self.pair_ids = [f"pair{i}" for i in range(n)]

    def futures(self, count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([[disc(r + rng.uniform(0.5, 3.0), h + rng.uniform(0.0, 150.0), rng)
                          for _ in range(count)] for r, h in zip(self.radius, self.hu, strict=True)])

    def baselines(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([disc(r, h, rng) for r, h in zip(self.radius, self.hu, strict=True)])


@pytest.fixture(scope="module")
def scored() -> tuple[dict, dict, Cohort]:
    """NAMD draws from the futures' distribution; the copy keeps the baseline; the real
    follow-up is one more draw (a point forecast); the shuffled row gives NAMD's samples to
    other nodules."""
    c = Cohort()
    futures = KnownFutures(list(reversed(c.pair_ids)), c.futures(M + H, 1)[::-1], M, H)
    crops_of = {"namd": c.futures(K, 2), "copy_baseline": c.baselines(3)[:, None],
                "real_followup": c.futures(1, 4)}
    block, per_nodule = kf.known_futures_scores(futures, c.pair_ids, crops_of,
                                                np.full(len(c.pair_ids), SPACING), WINDOW,
                                                "namd", EV)
    return block, per_nodule, c


def test_held_out_futures_best_copying_worse_another_nodule_worst(scored):
    block, _, _ = scored
    assert block["status"] == "ok"
    rows = block["rows"]
    assert list(rows) == ["namd", "copy_baseline", "real_followup", "held_out_futures", "shuffled"]
    for f in FEATURES:
        e = {name: r[f"energy_{f}"] for name, r in rows.items()}
        scale = e["copy_baseline"]
        assert abs(e["held_out_futures"]) < 0.15 * scale, (f, e)  # the ceiling: about 0
        assert abs(e["namd"]) < 0.15 * scale, (f, e)  # drawn like the futures: about 0 too
        assert e["real_followup"] > e["held_out_futures"]  # one draw is a point forecast
        assert e["shuffled"] > max(e.values()) - 1e-9, (f, e)  # another nodule's: worst
    assert rows["copy_baseline"]["k"] == rows["real_followup"]["k"] == 1
    assert rows["namd"]["k"] == rows["shuffled"]["k"] == K and rows["held_out_futures"]["k"] == H
    assert (block["reference_futures"], block["held_out_futures"], block["n"]) == (M, H, 24)
    assert block["ceiling"] == "held_out_futures" and block["shuffled_of"] == "namd"
    assert set(block["features"]) == set(FEATURES)


def test_the_paired_intervals_contain_their_estimate_and_separate_the_rows(scored):
    block, per_nodule, _ = scored
    rows = block["rows"]
    for name, row in rows.items():
        for key in ("vs_copy_baseline", "vs_ceiling"):
            for f in FEATURES:
                d = row[key][f]
                assert d["ci95"][0] <= d["delta"] <= d["ci95"][1], (name, key, f)
                own = per_nodule[f"{name}_energy_{f}"]
                other = per_nodule[("copy_baseline" if key == "vs_copy_baseline"
                                    else "held_out_futures") + f"_energy_{f}"]
                assert d["delta"] == pytest.approx(float((own - other).mean()))
    for f in FEATURES:
        assert rows["namd"]["vs_copy_baseline"][f]["ci95"][1] < 0  # better than copying
        assert rows["shuffled"]["vs_ceiling"][f]["ci95"][0] > 0  # worse than the ceiling
    assert rows["held_out_futures"]["vs_ceiling"]["image_hu"] == {"delta": 0.0, "ci95": [0.0, 0.0]}
    reference = block["shuffled_of"]
    assert f"vs_{reference}" not in rows[reference]  # every other row against the reference
    for f in FEATURES:
        d = rows["shuffled"][f"vs_{reference}"][f]  # the wrong nodule's samples: far worse
        assert d["ci95"][0] > 0 and d["delta"] == pytest.approx(float(
            (per_nodule[f"shuffled_energy_{f}"] - per_nodule[f"{reference}_energy_{f}"]).mean()))
    assert json.loads(json.dumps(block, allow_nan=False)) == block


def test_per_nodule_arrays_match_the_row_means(scored):
    block, per_nodule, c = scored
    assert len(per_nodule) == 5 * 3
    for name, row in block["rows"].items():
        for f in FEATURES:
            values = per_nodule[f"{name}_energy_{f}"]
            assert values.shape == (len(c.pair_ids),)
            assert row[f"energy_{f}"] == pytest.approx(float(values.mean()))


def test_energy_distance_is_zero_in_expectation_for_the_same_distribution():
    """Averaged over many draws: about 0 (within 4 standard errors) for samples of one
    distribution, clearly positive for a shifted or a wider one; for images too."""
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.normal(0.0, 1.0, (n, 5))
    same = kf.energy_distance(rng.normal(0.0, 1.0, (n, 3)), y)
    assert abs(same.mean()) < 4 * same.std() / np.sqrt(n)
    assert (same < 0).any()  # single estimates scatter around 0 (unbiased, not clipped)
    point = kf.energy_distance(rng.normal(0.0, 1.0, (n, 1)), y)  # K = 1: no spread term
    assert point.mean() > 0.5  # E|X - Y| for standard normals: 2 / sqrt(pi) = 1.13
    for other in (rng.normal(0.7, 1.0, (n, 3)), rng.normal(0.0, 2.0, (n, 3))):
        shifted = kf.energy_distance(other, y)
        assert shifted.mean() > 10 * shifted.std() / np.sqrt(n)
    img = lambda scale: rng.normal(-500.0, scale, (400, 3, 8, 8))  # noqa: E731
    same_img = kf.energy_distance(img(50.0), img(50.0), WINDOW)
    assert abs(same_img.mean()) < 4 * same_img.std() / np.sqrt(400)
    assert kf.energy_distance(img(50.0) + 40.0, img(50.0), WINDOW).mean() > 5.0


def test_the_image_distance_is_the_rms_hu_difference_within_the_window():
    a = np.full((1, 1, 4, 4), -600.0)
    assert kf.mean_distance(a, a + 10.0, WINDOW)[0] == pytest.approx(10.0)
    b = a.copy()
    b[0, 0, :2] += 40.0  # half the pixels 40 HU brighter: RMS = 40 / sqrt(2)
    assert kf.mean_distance(a, b, WINDOW)[0] == pytest.approx(40.0 / np.sqrt(2.0))
    assert kf.mean_distance(a + 2000.0, a + 3000.0, WINDOW)[0] == 0.0  # both clipped to 400 HU
    assert kf.mean_distance(np.array([[1.0, 4.0, 9.0]]))[0] == pytest.approx((3 + 8 + 5) / 3)
    assert kf.mean_distance(np.array([[1.0]]))[0] == 0.0
    with pytest.raises(ValueError, match=">= 2 reference"):
        kf.energy_distance(np.zeros((2, 3)), np.zeros((2, 1)))


def test_derangement_is_seeded_and_moves_every_nodule():
    for n in (2, 3, 17, 480):
        order = kf.derangement(n, seed=5)
        assert sorted(order) == list(range(n)) and (order != np.arange(n)).all()
        np.testing.assert_array_equal(order, kf.derangement(n, seed=5))
    assert not np.array_equal(kf.derangement(50, 1), kf.derangement(50, 2))


def test_not_available_passes_through_and_gaps_say_why():
    c = Cohort(4)
    crops = {"namd": c.futures(2, 0)}
    args = (c.pair_ids, crops, np.full(4, SPACING), WINDOW, "namd", EV)
    reason = "not available: /x/cohort is a test cohort; only a simulator knows a nodule's other futures"
    assert kf.known_futures_block(reason, *args) == {"status": reason}
    one = KnownFutures(c.pair_ids, c.futures(3, 1), 1, 2, Path("cohort/known_futures.csv"))
    assert "needs at least 2" in kf.known_futures_block(one, *args)["status"]
    some = KnownFutures(c.pair_ids[:3], c.futures(3, 1)[:3], 3, 0, Path("cohort/known_futures.csv"))
    status = kf.known_futures_block(some, *args)["status"]
    assert status.startswith("not available: cohort/known_futures.csv holds no futures for 1 of "
                             "the 4") and "'pair3'" in status
    no_held = kf.known_futures_block(KnownFutures(c.pair_ids, c.futures(3, 1), 3, 0), *args)
    assert no_held["status"] == "ok" and no_held["ceiling"] == "held_out_futures"
    assert no_held["rows"]["held_out_futures"]["status"].startswith("not available:")
    assert "vs_ceiling" not in no_held["rows"]["namd"]
    other = kf.known_futures_block(KnownFutures(c.pair_ids, c.futures(3, 1), 3, 0),
                                   c.pair_ids, crops, np.full(4, SPACING), WINDOW, "no_align", EV)
    assert other["rows"]["shuffled"]["status"].startswith("not computed: row no_align")


def test_futures_measured_once_give_the_same_block(monkeypatch):
    """namd evaluate measures the futures once (measure_futures) for this block and the readout:
    handed over, they are not measured again and the block is the same; an unusable status
    measures nothing."""
    c = Cohort(n=8)
    futures = KnownFutures(c.pair_ids, c.futures(M + H, 1), M, H)
    crops_of = {"namd": c.futures(K, 2), "copy_baseline": c.baselines(3)[:, None]}
    spacing = np.full(len(c.pair_ids), SPACING)
    args = (futures, c.pair_ids, crops_of, spacing, WINDOW, "namd", EV)
    fresh = kf.known_futures_scores(*args)[0]
    given = kf.measure_futures(futures, c.pair_ids, crops_of, spacing)
    assert given.longest_mm.shape == (len(c.pair_ids), M + H)
    real_measure = kf.measure

    def rows_only(crops, spacing_mm):  # the scored rows may be measured, the futures not
        if crops.shape[1] == M + H:
            raise AssertionError("futures measured again")
        return real_measure(crops, spacing_mm)

    monkeypatch.setattr(kf, "measure", rows_only)
    again = kf.known_futures_scores(*args, None, given)[0]
    assert json.dumps(again, sort_keys=True) == json.dumps(fresh, sort_keys=True)
    assert kf.measure_futures("not available: none", c.pair_ids, crops_of, spacing) is None
