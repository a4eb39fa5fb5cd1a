"""Every Lung-RADS rule of namd.clinical.lungrads at its size boundaries, per nodule type: at
baseline, new, growing, stable (v2022 stepped and v1.1) and crossing a threshold; 4X; rounding."""

from __future__ import annotations

import pytest

from namd.clinical import lungrads as L
from namd.clinical.lungrads import Finding, baseline_category, followup_category

YEAR = 365.0


def cat(kind: str, mean: float, solid: float | None = None, new: bool = False,
        spiculated: bool = False) -> str:
    return baseline_category(Finding(kind, mean, solid, spiculated), new).category


def follow(prior: Finding, current: Finding, days: float = YEAR, version: str = "2022") -> str:
    return followup_category(prior, current, days, version).category


@pytest.mark.parametrize("mean,new,expected", [
    (5.9, False, "2"), (6.0, False, "3"), (7.9, False, "3"), (8.0, False, "4A"),
    (14.9, False, "4A"), (15.0, False, "4B"),
    (3.9, True, "2"), (4.0, True, "3"), (5.9, True, "3"), (6.0, True, "4A"), (7.9, True, "4A"),
    (8.0, True, "4B")])
def test_solid_baseline_and_new(mean, new, expected):
    assert cat(L.SOLID, mean, new=new) == expected


@pytest.mark.parametrize("total,solid,new,expected", [
    (5.9, 3.0, False, "2"), (6.0, 5.9, False, "3"), (6.0, 0.5, False, "3"), (9.0, 6.0, False, "4A"),
    (9.0, 7.9, False, "4A"), (9.0, 8.0, False, "4B"),
    (5.9, 3.0, True, "3"), (6.0, 3.9, True, "4A"), (6.0, 4.0, True, "4B"), (12.0, 8.0, True, "4B")])
def test_part_solid_baseline_and_new(total, solid, new, expected):
    assert cat(L.PART_SOLID, total, solid, new=new) == expected


@pytest.mark.parametrize("mean,new,expected", [
    (29.9, False, "2"), (30.0, False, "3"), (29.9, True, "2"), (30.0, True, "3")])
def test_non_solid_baseline_and_new(mean, new, expected):
    assert cat(L.NON_SOLID, mean, new=new) == expected


@pytest.mark.parametrize("before,after,expected", [
    (5.0, 6.6, "4A"),   # growing (> 1.5 mm) and < 8 mm
    (6.3, 7.9, "4A"),
    (6.4, 8.0, "4B"),   # growing and >= 8 mm
    (7.0, 8.6, "4B"),
    (5.0, 6.5, "3"),    # +1.5 mm is not growth, but 6 mm is crossed: reclassified by size
    (7.0, 8.2, "4A"),   # crossed 8 mm without growth
    (6.5, 8.0, "4A"),
    (4.0, 5.0, "2"),    # small and stable
])
def test_solid_growth_and_thresholds(before, after, expected):
    assert follow(Finding(L.SOLID, before), Finding(L.SOLID, after)) == expected


@pytest.mark.parametrize("before,after,days,v2022,v11", [
    (7.0, 7.0, YEAR, "2", "2"),      # a stable 3: v2022 steps to 2 (>= 6 months), v1.1 codes 2
    (10.0, 10.0, YEAR, "3", "2"),    # a stable 4A: v2022 steps to 3, v1.1 codes 2
    (10.0, 7.5, YEAR, "3", "2"),     # smaller counts as stable: stepped from the prior's 4A
    (16.0, 16.0, YEAR, "4B", "2"),   # a stable 4B stays until proven benign (v2022)
    (10.0, 10.0, 80.0, "4A", "4A"),  # under 3 months: no stable rule
    (10.0, 10.0, 100.0, "3", "2"),   # 3 months: 4A steps down
    (7.0, 7.0, 100.0, "3", "2"),     # v2022 keeps a 3 until 6 months
    (7.0, 7.0, 190.0, "2", "2"),
])
def test_stable_rule_v2022_stepped_and_v11(before, after, days, v2022, v11):
    prior, now = Finding(L.SOLID, before), Finding(L.SOLID, after)
    assert follow(prior, now, days, "2022") == v2022
    assert follow(prior, now, days, "1.1") == v11


@pytest.mark.parametrize("prior,current,expected", [
    (Finding(L.PART_SOLID, 10.0, 3.0), Finding(L.PART_SOLID, 10.0, 4.6), "4B"),  # growing >= 4
    (Finding(L.PART_SOLID, 10.0, 1.0), Finding(L.PART_SOLID, 10.0, 2.6), "4A"),  # growing < 4
    (Finding(L.PART_SOLID, 10.0, 2.4), Finding(L.PART_SOLID, 10.0, 3.9), "2"),   # +1.5: stable 3
    (Finding(L.PART_SOLID, 10.0, 2.3), Finding(L.PART_SOLID, 10.0, 3.9), "4A"),
    (Finding(L.PART_SOLID, 10.0, 2.5), Finding(L.PART_SOLID, 10.0, 4.0), "2"),
    (Finding(L.PART_SOLID, 10.0, 2.4), Finding(L.PART_SOLID, 10.0, 4.0), "4B"),
    (Finding(L.NON_SOLID, 10.0), Finding(L.PART_SOLID, 10.0, 3.9), "4A"),  # new solid component
    (Finding(L.NON_SOLID, 10.0), Finding(L.PART_SOLID, 10.0, 4.0), "4B"),
    (Finding(L.PART_SOLID, 5.0, 2.0), Finding(L.PART_SOLID, 6.2, 2.0), "3"),  # crossed 6 mm total
    (Finding(L.PART_SOLID, 9.0, 5.5), Finding(L.PART_SOLID, 9.0, 6.4), "4A"),  # crossed 6 mm solid
])
def test_part_solid_growth_new_component_and_thresholds(prior, current, expected):
    assert follow(prior, current) == expected


@pytest.mark.parametrize("before,after,expected", [
    (10.0, 12.0, "2"),   # growing under 30 mm
    (29.0, 30.0, "3"),   # crossed 30 mm
    (31.0, 32.5, "2"),   # >= 30 mm, +1.5: stable or slowly growing
    (31.0, 32.6, "3"),   # >= 30 mm and growing (namd's choice)
    (35.0, 33.0, "2"),
])
def test_non_solid_follow_up(before, after, expected):
    assert follow(Finding(L.NON_SOLID, before), Finding(L.NON_SOLID, after)) == expected


def test_growth_is_per_twelve_months_over_a_longer_interval():
    prior = Finding(L.SOLID, 5.0)
    assert follow(prior, Finding(L.SOLID, 6.6), 730.0) == "3"  # 0.8 mm / year: crossed 6 mm
    assert follow(prior, Finding(L.SOLID, 8.0), 800.0) == "4A"  # 1.37 mm / year: crossed 8 mm
    assert follow(prior, Finding(L.SOLID, 8.2), 730.0) == "4B"  # 1.6 mm / year: growing, >= 8


def test_spiculated_category_3_or_4_is_4x():
    assert cat(L.SOLID, 5.9, spiculated=True) == "2"
    assert cat(L.SOLID, 6.0, spiculated=True) == "4X"
    assert cat(L.SOLID, 15.0, spiculated=True) == "4X"
    assert cat(L.NON_SOLID, 30.0, spiculated=True) == "4X"
    grown = followup_category(Finding(L.SOLID, 5.0, spiculated=True),
                              Finding(L.SOLID, 6.6, spiculated=True), YEAR)
    assert grown.category == "4X" and "growing" in grown.rule and "spiculated" in grown.rule
    assert L.MANAGEMENT["4X"] == L.MANAGEMENT["4B"] and L.MALIGNANCY["4X"] == "> 15%"


def test_mean_diameter_rounds_each_axis_then_the_mean_halves_up():
    assert L.mean_diameter(6.0, 5.9) == 6.0  # 5.95 -> 6.0: category 3, not 2
    assert cat(L.SOLID, L.mean_diameter(6.0, 5.9)) == "3"
    assert L.mean_diameter(6.04, 5.84) == 5.9  # 6.0 and 5.8
    assert L.round_mm(5.25) == 5.3 and L.round_mm(5.249) == 5.2
    assert L.mean_diameter(12.44, 8.06) == 10.3  # 12.4 and 8.1 -> 10.25 -> 10.3


def test_management_malignancy_and_order():
    c = baseline_category(Finding(L.SOLID, 9.0))
    assert c.as_json() == {"category": "4A", "rule": "solid at baseline, 8 to < 15 mm",
                           "management": L.MANAGEMENT["4A"], "malignancy": "5-15%"}
    assert [L.at_least_4a(x) for x in L.CATEGORIES] == [False, False, True, True, True]
    assert "12 months" in L.MANAGEMENT["2"] and "6 months" in L.MANAGEMENT["3"]


@pytest.mark.parametrize("args,field", [
    (("cyst", 5.0), "kind"), ((L.SOLID, 0.0), "mean_mm"), ((L.SOLID, float("nan")), "mean_mm"),
    ((L.PART_SOLID, 8.0), "solid_mm"), ((L.PART_SOLID, 8.0, 9.0), "solid_mm")])
def test_bad_findings_are_one_line_errors_naming_the_field(args, field):
    with pytest.raises(ValueError, match=rf"^{field}: ") as err:
        Finding(*args)
    assert "\n" not in str(err.value)


def test_bad_version_and_interval():
    a = Finding(L.SOLID, 5.0)
    with pytest.raises(ValueError, match="^version: "):
        followup_category(a, a, YEAR, "1.0")
    with pytest.raises(ValueError, match="^interval_days: "):
        followup_category(a, a, 0.0)
