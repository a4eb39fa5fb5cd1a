"""One patient's readout (namd.clinical.readout), the measurer's new outputs it reads, and its
agreement measures (namd.clinical.agreement)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from namd.clinical import READOUT_NOTICE
from namd.clinical import agreement as A
from namd.clinical import lungrads as L
from namd.clinical.readout import NO_GROWTH, read_patient
from namd.cohort.ehr import EHR
from namd.config.readout import MeasurerError, ReadoutConfig
from namd.evaluation.measure import CUT_BY_BORDER, NO_NODULE, measure

SP = 0.7
EHR_SOLID = EHR(SCT_PRE_ATT=1, SCT_LONG_DIA=9.0, SCT_PERP_DIA=8.0, SCT_MARGINS=2)


def nodule(radius_px: float, centre=(31.5, 31.5), hu: float = 30.0, ry: float | None = None,
           seed: int = 0) -> np.ndarray:
    """Lung (-850 HU) with an elliptical nodule, light noise."""
    yy, xx = np.mgrid[:64, :64]
    ry = ry or radius_px
    inside = ((yy - centre[0]) / ry) ** 2 + ((xx - centre[1]) / radius_px) ** 2 <= 1
    noise = np.random.default_rng(seed).normal(0, 10, (64, 64))
    return (np.where(inside, hu, -850.0) + noise).astype(np.float32)


def exact() -> ReadoutConfig:
    """A readout without measurement error (to check the rules' arithmetic)."""
    zero = MeasurerError(bias_mm=0.0, size_sd_mm=0.0, growth_sd_mm=0.0)
    return ReadoutConfig(solid=zero, part_solid=zero, non_solid=zero, draws=2)


def test_measurer_short_axis_volume_and_not_measurable_reasons():
    m = measure(np.stack([nodule(10, ry=5), np.random.default_rng(0).normal(-850, 10, (64, 64)),
                          nodule(20, centre=(31.5, 50.0))]), SP)
    assert m.longest_mm[0] == pytest.approx(20 * SP, rel=0.1)
    assert m.short_mm[0] == pytest.approx(10 * SP, rel=0.1)
    assert m.mean_mm[0] == pytest.approx(15 * SP, rel=0.1)
    assert m.volume_mm3[0] == pytest.approx(np.pi / 6 * 14 * 7 ** 2, rel=0.25)
    assert m.measurable.tolist() == [True, False, False]
    assert m.not_measurable_reason().tolist() == ["", NO_NODULE, CUT_BY_BORDER]
    assert m.found[2] and m.cut_by_border[2] and not m.cut_by_border[0]


def test_readout_counts_not_measurable_samples_and_is_json_and_seeded():
    samples = np.stack([nodule(6, seed=i) for i in range(6)]
                       + [np.random.default_rng(9).normal(-850, 10, (64, 64)).astype(np.float32),
                          nodule(20, centre=(31.5, 50.0))])
    r = read_patient(nodule(6), samples, EHR_SOLID, SP, ReadoutConfig(), "p1")
    json.dumps(r)
    assert r["notice"] == READOUT_NOTICE and "2D crop" in r["notice"]
    assert r["k"] == 8
    assert r["not_measurable"] == {"count": 2, "reasons": {NO_NODULE: 1, CUT_BY_BORDER: 1}}
    f = r["followup"]
    assert f["draws"] == 6 * ReadoutConfig().draws  # the measurable samples only
    assert sum(f["category_share"].values()) == pytest.approx(1.0)
    assert f["most_likely"] in L.CATEGORIES and f["management"] == L.MANAGEMENT[f["most_likely"]]
    assert 0 <= f["p_growth_ge_2mm"] <= f["p_growth_gt_1_5mm"] <= 1
    assert "2 of 8 samples not measurable" in r["summary"]
    assert read_patient(nodule(6), samples, EHR_SOLID, SP, ReadoutConfig(), "p1") == r
    other = read_patient(nodule(6), samples, EHR_SOLID, SP, ReadoutConfig(), "p2")
    assert other["followup"]["growth_median_mm"] != f["growth_median_mm"]


def test_growth_and_doubling_time_never_negative():
    grown = np.stack([nodule(9, seed=i) for i in range(4)])  # 8.4 -> 12.6 mm in a year
    r = read_patient(nodule(6), grown, EHR_SOLID, SP, exact(), "g")["followup"]
    assert r["p_growth_gt_1_5mm"] == 1.0 and r["p_growth_ge_2mm"] == 1.0
    assert r["most_likely"] == "4B"  # solid, growing, >= 8 mm
    d0 = float(measure(nodule(6), SP).mean_mm)
    d = 365.0 * np.log(2) / (3 * np.log(r["growth_median_mm"] / d0 + 1))  # t ln 2 / ln (d1/d0)^3
    assert isinstance(r["vdt"]["median_days"], float) and r["vdt"]["median_days"] < 400
    assert r["vdt"]["median_days"] == pytest.approx(d, rel=0.02)
    assert r["vdt"]["p_below_400_days"] == 1.0
    shrunk = np.stack([nodule(4, seed=i) for i in range(4)])
    s = read_patient(nodule(6), shrunk, EHR_SOLID, SP, exact(), "s")["followup"]
    assert s["vdt"]["median_days"] == NO_GROWTH and s["vdt"]["range_days"] == [NO_GROWTH, NO_GROWTH]
    assert s["vdt"]["no_growth_share"] == 1.0 and s["p_growth_gt_1_5mm"] == 0.0


def test_measurement_error_enters_the_probabilities():
    near = np.stack([nodule(7.2, seed=i) for i in range(10)])  # +1.76 mm: above 1.5
    exact_p = read_patient(nodule(6), near, EHR_SOLID, SP, exact(), "e")["followup"]["p_growth_gt_1_5mm"]
    noisy = read_patient(nodule(6), near, EHR_SOLID, SP, ReadoutConfig(draws=50), "e")["followup"]
    assert exact_p == 1.0 and 0.5 < noisy["p_growth_gt_1_5mm"] < 1.0


def test_record_without_attenuation_uses_the_image_and_says_so():
    ehr = EHR(SCT_LONG_DIA=9.0, SCT_PERP_DIA=8.0)
    r = read_patient(nodule(6), nodule(6)[None], ehr, SP, ReadoutConfig(), "a")
    assert r["attenuation"]["type"] == L.SOLID
    assert r["attenuation"]["source"].startswith("image (the record's SCT_PRE_ATT is missing")
    ggn = read_patient(nodule(8, hu=-550.0), nodule(8, hu=-550.0)[None], EHR(), SP, ReadoutConfig(), "b")
    assert ggn["attenuation"]["type"] == L.NON_SOLID
    assert ggn["baseline_category"]["record"]["status"].startswith("not available: the record has no SCT_LONG_DIA")
    assert ggn["baseline_category"]["image"]["category"] == "2"


def test_baseline_categories_from_record_and_image():
    r = read_patient(nodule(6), nodule(6)[None], EHR_SOLID, SP, ReadoutConfig(), "c")
    assert r["baseline_category"]["record"]["category"] == "4A"  # (9 + 8) / 2 = 8.5 mm
    assert r["baseline_category"]["image"]["category"] == "4A"   # 12 px x 0.7 = 8.4 mm
    spic = EHR(SCT_PRE_ATT=1, SCT_LONG_DIA=9.0, SCT_PERP_DIA=8.0, SCT_MARGINS=1)
    assert read_patient(nodule(6), nodule(6)[None], spic, SP, ReadoutConfig(), "c")[
        "baseline_category"]["record"]["category"] == "4X"
    new = read_patient(nodule(3.6), nodule(3.6)[None], EHR_SOLID, SP, ReadoutConfig(), "c", new=True)
    assert new["baseline_category"]["image"]["category"] == "3"  # new, 4 to < 6 mm
    assert new["new_nodule"] is True


def test_unmeasurable_baseline_gives_no_follow_up_numbers_and_no_zero_size():
    lung = np.random.default_rng(1).normal(-850, 10, (64, 64)).astype(np.float32)
    r = read_patient(lung, nodule(6)[None], EHR_SOLID, SP, ReadoutConfig(), "u")
    assert r["baseline_image"] == {"measurable": False, "reason": NO_NODULE}
    assert r["followup"]["status"] == f"not available: the baseline is not measurable ({NO_NODULE})"
    assert r["baseline_category"]["record"]["category"] == "4A"
    assert r["summary"].startswith("Follow-up readout not available")


def test_weighted_kappa_and_confusion():
    real = ["2", "3", "4A", "4B", "4X", "2", "3"]
    pred = ["2", "4A", "4A", "3", "4X", "3", "3"]
    for power, weights in ((1, "linear"), (2, "quadratic")):
        assert A.weighted_kappa(real, pred, power) == pytest.approx(
            cohen_kappa_score(real, pred, labels=list(L.CATEGORIES), weights=weights))
    assert A.weighted_kappa(real, real) == 1.0
    table = A.confusion(real, pred)
    assert sum(map(sum, table)) == 7 and table[1][2] == 1 and table[0][0] == 1


def test_real_outcome_recorded_growth_and_a_scored_row():
    cfg = ReadoutConfig()
    m = measure(np.stack([nodule(6), nodule(9)]), SP)
    base, follow = (type(m)(*(np.asarray(getattr(m, f))[i] for f in m.__dataclass_fields__)) for i in (0, 1))
    out = A.real_outcome(base, follow, L.SOLID, False, cfg)
    assert out["status"] == "ok" and out["growth_mm"] > 3 and out["category"] == "4B"
    assert A.real_outcome(base, follow, None, False, cfg)["status"] == "not measurable"
    assert A.recorded_growth(EHR(SCT_LONG_DIA=6.0, SCT_PERP_DIA=5.0),
                             EHR(SCT_LONG_DIA=8.0, SCT_PERP_DIA=6.0)) == pytest.approx(1.5)
    assert A.recorded_growth(EHR(SCT_LONG_DIA=6.0), EHR(SCT_LONG_DIA=8.0, SCT_PERP_DIA=6.0)) is None
    grown = read_patient(nodule(6), np.stack([nodule(9)] * 3), EHR_SOLID, SP, cfg, "x")
    flat = read_patient(nodule(6), np.stack([nodule(6)] * 3), EHR_SOLID, SP, cfg, "y")
    real = [out, {"status": "ok", "growth_mm": 0.1, "category": "3"}, {"status": "not measurable"}]
    row = A.score_row([grown, flat, flat], real, [0.3, 0.1, None], [4.0, None, None])
    assert row["n"] == 2 and row["left_out"] == 1
    assert row["growth"]["auroc"] == 1.0 and row["growth"]["positives"] == 1
    assert row["growth_recorded"]["n"] == 1 and row["brock"]["n"] == 2
    assert row["confusion"][3][3] + row["confusion"][3][4] == 1
