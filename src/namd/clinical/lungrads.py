"""Every Lung-RADS rule namd applies, in one module: the category of one nodule at baseline, as
a new nodule, or at follow-up against its prior (growing, stable, crossing a size threshold),
the management each category implies, and its malignancy probability.

Sources: ACR Lung-RADS v2022 (Christensen et al., "ACR Lung-RADS v2022: Assessment Categories
and Management Recommendations", CHEST 2024;165(3):738-753, and JACR 2024;21:473); the v1.1
table as printed on the NCBI Bookshelf (NBK568579, Appendix A, Table 2). Research use only.

Measuring (v2022): long and short axis to 0.1 mm, mean diameter = (long + short) / 2 reported to
0.1 mm (`mean_diameter`); part-solid nodules are categorised by their total mean diameter and
their solid component's mean diameter. Growth: mean diameter up by more than 1.5 mm within 12
months (`GROWTH_MM`). Size thresholds apply at first detection and to nodules that enlarge: a
nodule that crosses a threshold is reclassified by size even without meeting growth.

Categories (mean diameter; baseline / new / growing):

| category | solid | part-solid | non-solid |
|---|---|---|---|
| 2 | < 6; new < 4 | < 6 total at baseline | < 30; >= 30 stable or slowly growing |
| 3 | 6 to < 8; new 4 to < 6 | >= 6 total, solid < 6; new < 6 total | >= 30 at baseline or new |
| 4A | 8 to < 15; growing < 8; new 6 to < 8 | solid 6 to < 8; new or growing solid < 4 | - |
| 4B | >= 15; new or growing >= 8 | solid >= 8; new or growing solid >= 4 | - |

4X: a category 3 or 4 nodule with features that raise suspicion; here spiculated margins.

Where v2022 and v1.1 differ (for what namd reads): the size cut-offs above are the same; the
stable-nodule rule is not. v1.1 codes "category 3 or 4 nodules unchanged for >= 3 months" as 2.
v2022 steps down one level: a 3 stable at its 6-month follow-up becomes 2, a 4A stable at its
3-month follow-up becomes 3, and a 4B returns to 2 only when proven benign by work-up (not
something an image can show, so a stable 4B stays 4B here). `version` picks the rule. v2022 also
adds atypical cysts, juxtapleural and airway nodules and category 0 for infection, none of which
a 2D crop of one nodule can tell; they are not implemented.

Choices where the rules are silent: growth over an interval longer than 12 months is taken per
12 months (the change times 365.25 / days); a non-solid nodule >= 30 mm that grows by more than
1.5 mm is 3 (the rules give 2 only to one stable or slowly growing); a part-solid nodule grows
when its solid component does, and a solid component appearing in a non-solid nodule is new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOLID, PART_SOLID, NON_SOLID = "solid", "part-solid", "non-solid"
KINDS = (SOLID, PART_SOLID, NON_SOLID)
ATTENUATION_KIND = {1: SOLID, 2: NON_SOLID, 3: PART_SOLID}  # NLST SCT_PRE_ATT codes
CATEGORIES = ("2", "3", "4A", "4B", "4X")  # ordered; 4X is a 3 or 4 with suspicious features
VERSIONS = ("2022", "1.1")
GROWTH_MM = 1.5  # Lung-RADS growth: > 1.5 mm in mean diameter within 12 months
YEAR_DAYS = 365.25
MONTH_DAYS = YEAR_DAYS / 12

MANAGEMENT = {
    "2": "continue annual screening with LDCT in 12 months",
    "3": "LDCT in 6 months",
    "4A": "LDCT in 3 months; PET/CT may be used when there is a solid nodule or solid "
          "component >= 8 mm",
    "4B": "diagnostic chest CT with or without contrast; PET/CT may be used when there is a "
          "solid nodule or solid component >= 8 mm; tissue sampling; and/or referral for "
          "further clinical evaluation",
}
MANAGEMENT["4X"] = MANAGEMENT["4B"]
MALIGNANCY = {"2": "< 1%", "3": "1-2%", "4A": "5-15%", "4B": "> 15%", "4X": "> 15%"}


@dataclass(frozen=True)
class Finding:
    """One nodule as Lung-RADS reads it: its type, mean diameter (mm, to 0.1), the solid
    component's mean diameter for a part-solid nodule, and whether its margins are spiculated."""

    kind: str
    mean_mm: float
    solid_mm: float | None = None
    spiculated: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.mean_mm, (int, float)) and math.isfinite(self.mean_mm)
                and self.mean_mm > 0):
            raise ValueError(f"mean_mm: a nodule's mean diameter must be a positive number of "
                             f"mm, got {self.mean_mm!r}")
        if self.kind == PART_SOLID:
            solid = self.solid_mm
            if solid is None or not math.isfinite(solid) or not 0 <= solid <= self.mean_mm + 0.05:
                raise ValueError(f"solid_mm: a part-solid nodule needs its solid component's mean "
                                 f"diameter, from 0 to mean_mm = {self.mean_mm:g}, got {solid!r}")


@dataclass(frozen=True)
class Category:
    """A Lung-RADS category with the rule that gave it."""

    category: str
    rule: str

    @property
    def management(self) -> str:
        """What the category implies (Lung-RADS management)."""
        return MANAGEMENT[self.category]

    @property
    def malignancy(self) -> str:
        """The category's probability of malignancy (Lung-RADS)."""
        return MALIGNANCY[self.category]

    def as_json(self) -> dict[str, str]:
        """Category, rule, management and malignancy probability."""
        return {"category": self.category, "rule": self.rule, "management": self.management,
                "malignancy": self.malignancy}


def round_mm(value: float) -> float:
    """A length to 0.1 mm, halves up (5.25 -> 5.3), as Lung-RADS reports it."""
    return math.floor(value * 10.0 + 0.5 + 1e-9) / 10.0


def mean_diameter(long_mm: float, short_mm: float) -> float:
    """Lung-RADS' mean diameter: each axis to 0.1 mm, their mean to 0.1 mm."""
    return round_mm((round_mm(long_mm) + round_mm(short_mm)) / 2.0)


def at_least_4a(category: str) -> bool:
    """True for 4A, 4B and 4X."""
    return CATEGORIES.index(category) >= CATEGORIES.index("4A")


def _suspicious(cat: Category, finding: Finding) -> Category:
    """4X for a spiculated category 3 or 4 nodule."""
    if finding.spiculated and cat.category in ("3", "4A", "4B"):
        return Category("4X", f"{cat.rule}; spiculated margins: category {cat.category} with a "
                              "feature that raises suspicion")
    return cat


def _solid_size(mean: float, new: bool) -> Category:
    """Solid nodule at baseline or new, by mean diameter."""
    cuts = ((4.0, "2"), (6.0, "3"), (8.0, "4A")) if new else ((6.0, "2"), (8.0, "3"), (15.0, "4A"))
    what = "new solid" if new else "solid at baseline"
    lower = 0.0
    for cut, cat in cuts:
        if mean < cut:
            return Category(cat, f"{what}, {lower:g} to < {cut:g} mm" if lower else
                            f"{what}, < {cut:g} mm")
        lower = cut
    return Category("4B", f"{what}, >= {lower:g} mm")


def _part_solid_size(f: Finding, new: bool) -> Category:
    """Part-solid nodule at baseline or new, by total and solid-component diameter."""
    solid = float(f.solid_mm or 0.0)
    if f.mean_mm < 6.0:
        return Category("3", "new part-solid, < 6 mm total") if new else \
            Category("2", "part-solid at baseline, < 6 mm total")
    if new:
        return _new_solid_component(solid, "new part-solid")
    if solid < 6.0:
        return Category("3", "part-solid, >= 6 mm total, solid component < 6 mm")
    if solid < 8.0:
        return Category("4A", "part-solid, solid component 6 to < 8 mm")
    return Category("4B", "part-solid, solid component >= 8 mm")


def _new_solid_component(solid: float, what: str) -> Category:
    """A new or growing solid component: 4A below 4 mm, else 4B."""
    if solid < 4.0:
        return Category("4A", f"{what}, solid component < 4 mm")
    return Category("4B", f"{what}, solid component >= 4 mm")


def _non_solid_size(mean: float, new: bool) -> Category:
    """Non-solid (ground-glass) nodule at baseline or new."""
    if mean < 30.0:
        return Category("2", f"non-solid{', new' if new else ''}, < 30 mm")
    return Category("3", f"non-solid, >= 30 mm {'new' if new else 'at baseline'}")


def size_category(f: Finding, new: bool = False) -> Category:
    """The category by size alone: at baseline screening, or (`new`) a nodule not seen before."""
    if f.kind == SOLID:
        return _solid_size(f.mean_mm, new)
    if f.kind == PART_SOLID:
        return _part_solid_size(f, new)
    return _non_solid_size(f.mean_mm, new)


def baseline_category(f: Finding, new: bool = False) -> Category:
    """The Lung-RADS category of a nodule at baseline (or new), 4X when spiculated."""
    return _suspicious(size_category(f, new), f)


def per_year(change_mm: float, interval_days: float) -> float:
    """A change in mm per 12 months: itself within a year, scaled down over a longer interval."""
    return change_mm if interval_days <= YEAR_DAYS else change_mm * YEAR_DAYS / interval_days


def _stable(cat: Category, interval_days: float, version: str) -> Category:
    """The stable-nodule rule (the one where v2022 and v1.1 differ)."""
    months = interval_days / MONTH_DAYS
    if version == "1.1":
        if cat.category in ("3", "4A", "4B") and months >= 3:
            return Category("2", f"category {cat.category} unchanged for >= 3 months (v1.1)")
        return cat
    if cat.category == "3" and months >= 6:
        return Category("2", "category 3 stable or smaller at >= 6 months (v2022 stepped)")
    if cat.category == "4A" and months >= 3:
        return Category("3", "category 4A stable or smaller at >= 3 months (v2022 stepped)")
    return cat


def _growing(prior: Finding, current: Finding, interval_days: float) -> Category | None:
    """The new-or-growing rules of the current finding's type, or None when it does not grow."""
    if current.kind == PART_SOLID:
        solid = float(current.solid_mm or 0.0)
        if prior.kind == NON_SOLID or (prior.kind == PART_SOLID and not prior.solid_mm):
            return _new_solid_component(solid, "part-solid with a new solid component")
        before = prior.solid_mm if prior.kind == PART_SOLID else prior.mean_mm
        if per_year(solid - float(before or 0.0), interval_days) > GROWTH_MM:
            return _new_solid_component(solid, "part-solid, solid component growing > 1.5 mm")
        return None
    if per_year(current.mean_mm - prior.mean_mm, interval_days) <= GROWTH_MM:
        return None
    if current.kind == SOLID:
        if current.mean_mm < 8.0:
            return Category("4A", "solid, growing > 1.5 mm, < 8 mm")
        return Category("4B", "solid, growing > 1.5 mm, >= 8 mm")
    if current.mean_mm >= 30.0:
        return Category("3", "non-solid, >= 30 mm and growing > 1.5 mm (namd's choice)")
    return Category("2", "non-solid, growing, < 30 mm")


def followup_category(prior: Finding, current: Finding, interval_days: float,
                      version: str = "2022") -> Category:
    """The category of `current`, `interval_days` after `prior` (the same nodule): the growing
    rules first, then its size category when it crosses a threshold the prior was below, else
    (stable or smaller) the prior's size category stepped down by the stable-nodule rule of
    `version`; 4X when spiculated."""
    if version not in VERSIONS:
        raise ValueError(f"version: must be one of {', '.join(VERSIONS)}, got {version!r}")
    if not (math.isfinite(interval_days) and interval_days > 0):
        raise ValueError(f"interval_days: must be a positive number of days, got {interval_days!r}")
    grown = _growing(prior, current, interval_days)
    if grown is not None:
        return _suspicious(grown, current)
    now = size_category(current)
    if current.kind == NON_SOLID and now.category == "3" and prior.mean_mm >= 30.0:
        return _suspicious(Category("2", "non-solid, >= 30 mm, stable or slowly growing"), current)
    was = size_category(prior) if prior.kind == current.kind else now
    if CATEGORIES.index(now.category) > CATEGORIES.index(was.category):
        return _suspicious(Category(now.category, f"{now.rule}: crossed a size threshold"), current)
    return _suspicious(_stable(was, interval_days, version), current)
