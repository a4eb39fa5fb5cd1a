"""The 13 EHR features of Appendix C with their official NLST codes, validation, and the
radiology-report sentence that is the one source of prompt text for the LLM stage.

Codes follow the NLST data dictionaries (docs/reference-facts.md, section 1). Missing values are
first-class: a field is `None`, never silently 0 or a category.

A record (an EHR JSON, a dict given to the API) holds the 13 fields, matched case-insensitively,
and may hold the keys of EXTRA_KEYS, which the model ignores: a record id (ID_KEYS; `namd
predict` seeds a patient's samples from it), `nodule_id`, and the non-EHR values of the
authors' demo .npy blocks (`unique_ids`, `year`, `label`; never model inputs). Any other key
is an error naming it and the field it most resembles, so a typo (`SCT_LONG_DAI`, `Sex`)
never silently turns a known value into a missing one.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# NLST SAS-style missing codes, as they appear in the CSVs.
MISSING_CODES = frozenset({"", ".", ".M", ".N", ".S", ".E", ".W", "NA", "NAN", "NONE"})

ATTENUATION = {1: "solid", 2: "ground glass", 3: "part solid", 4: "fluid density",
               6: "fat density", 7: "other", 9: "unable to determine"}
LOBE = {1: "right upper lobe", 2: "right middle lobe", 3: "right lower lobe",
        4: "left upper lobe", 5: "lingula", 6: "left lower lobe", 8: "other"}
MARGINS = {1: "spiculated", 2: "smooth", 3: "poorly defined", 9: "unable to determine"}
GENDER = {1: "male", 2: "female"}
YES_NO = {0: "no", 1: "yes"}
FAMILY = ("famfather", "fammother", "fambrother", "famsister", "famchild")
RELATIVE = {"famfather": "father", "fammother": "mother", "fambrother": "brother",
            "famsister": "sister", "famchild": "child"}

NODULE_FIELDS = ("SCT_PRE_ATT", "SCT_EPI_LOC", "SCT_LONG_DIA", "SCT_PERP_DIA", "SCT_MARGINS")
PATIENT_FIELDS = ("age", "diagemph", "gender", *FAMILY)
EHR_FIELDS = NODULE_FIELDS + PATIENT_FIELDS

# Keys a record may hold besides the fields (ignored by the model); the id keys name the patient.
ID_KEYS = ("patient_id", "id", "pid")
EXTRA_KEYS = frozenset({*ID_KEYS, "nodule_id", "unique_ids", "year", "label"})
# Usual names of a field that a spelling comparison cannot see are the same thing.
SYNONYMS = {"sex": "gender", "emphysema": "diagemph"}

CATEGORICAL: dict[str, dict[int, str]] = {
    "SCT_PRE_ATT": ATTENUATION, "SCT_EPI_LOC": LOBE, "SCT_MARGINS": MARGINS,
    "gender": GENDER, "diagemph": YES_NO, **{f: YES_NO for f in FAMILY},
}
# Plausible physical ranges (inclusive). NLST nodules are >= 4 mm; masses rarely exceed 10 cm.
CONTINUOUS: dict[str, tuple[float, float]] = {
    "SCT_LONG_DIA": (0.5, 150.0), "SCT_PERP_DIA": (0.0, 150.0), "age": (18.0, 110.0),
}


class EHRError(ValueError):
    """An EHR value that cannot be used; the message names the record, field and value."""


def is_missing(value: Any) -> bool:
    """True for None, NaN and the NLST missing codes ('.M', '.N', '' ...)."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):  # pandas missing markers
        return True
    if isinstance(value, str):
        return value.strip().upper() in MISSING_CODES
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return False  # a complex value is refused by _kind_problem, not cast here
    try:  # any real number type (float, numpy float32/64...) that is NaN
        return math.isnan(value)
    except TypeError:
        return False


def nearest_field(name: str) -> str | None:
    """The EHR field a misspelt or synonymous key most resembles (case-insensitive), if any."""
    key = str(name).strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    lower = {f.lower(): f for f in EHR_FIELDS}
    close = difflib.get_close_matches(key, list(lower), n=1)
    return lower[close[0]] if close else None


def _field_keys(row: Mapping[str, Any], record: str) -> dict[str, Any]:
    """Field name -> value of a record; an unknown or repeated key is an EHRError naming it."""
    by_field = {f.lower(): f for f in EHR_FIELDS}
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in row.items():
        lower = str(key).strip().lower()
        if lower in EXTRA_KEYS:
            continue
        if lower not in by_field:
            near = nearest_field(lower)
            hint = (f"did you mean {near}?" if near else f"EHR fields: {', '.join(EHR_FIELDS)}; "
                    f"other keys allowed: {', '.join(sorted(EXTRA_KEYS))}")
            raise EHRError(f"record {record}: unknown key {key!r} ({hint})")
        if lower in seen:
            raise EHRError(f"record {record}: keys {seen[lower]!r} and {key!r} both give field "
                           f"{by_field[lower]}")
        seen[lower] = str(key)
        values[by_field[lower]] = value
    return values


def record_id(row: Mapping[str, Any]) -> str | None:
    """The record's id from its first present ID_KEYS key, with '/<nodule_id>' when given."""
    lower = {str(k).strip().lower(): v for k, v in row.items()}
    ident = next((str(lower[k]).strip() for k in ID_KEYS if not is_missing(lower.get(k))), None)
    if ident is None:
        return None
    nodule = lower.get("nodule_id")
    return ident if is_missing(nodule) else f"{ident}/{str(nodule).strip()}"


def _kind_problem(value: Any) -> str | None:
    """What a value is when it can never be a code or a number, whatever it holds, else None.

    Python would read `true` as 1 (gender 1 = male) and a complex number as its real part, so a
    boolean, a complex number or any other object (a list, bytes, an array) is refused by kind;
    strings ('12.5', NLST's CSV text) and real numbers (numpy's included) are parsed."""
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if isinstance(value, bool) or kind == "b":
        return "a boolean"
    if kind == "c" or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)):
        return "a complex number"
    if kind in ("i", "u", "f") and getattr(value, "ndim", 0) == 0:
        return None
    if isinstance(value, (str, numbers.Number)) and kind is None:
        return None
    return f"of type {type(value).__name__}"


def _expected(name: str) -> str:
    """What field `name` holds: its codes or its range."""
    if name in CATEGORICAL:
        return "a code: " + ", ".join(f"{k} ({v})" for k, v in CATEGORICAL[name].items())
    lo, hi = CONTINUOUS[name]
    return f"a number from {lo:g} to {hi:g}"


def _parse_field(name: str, value: Any, record: str) -> float | int | None:
    """Parse and range-check one field; raise EHRError naming record, field and value."""
    if is_missing(value):
        return None
    problem = _kind_problem(value)
    if problem:
        raise EHRError(f"record {record}: field {name} = {value!r} is {problem}, not a code or "
                       f"number; give {_expected(name)} (null = missing)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EHRError(f"record {record}: field {name} has non-numeric value {value!r}") from None
    if not math.isfinite(number):
        raise EHRError(f"record {record}: field {name} has non-finite value {value!r}")
    if name in CATEGORICAL:
        codes = CATEGORICAL[name]
        if number != int(number) or int(number) not in codes:
            allowed = ", ".join(f"{k} ({v})" for k, v in codes.items())
            raise EHRError(f"record {record}: field {name} has code {value!r}; allowed: {allowed}")
        return int(number)
    lo, hi = CONTINUOUS[name]
    if not lo <= number <= hi:
        raise EHRError(f"record {record}: field {name} = {value!r} is outside [{lo:g}, {hi:g}]")
    return number


@dataclass(frozen=True)
class EHR:
    """The 13 baseline-year features of one nodule and its patient (None = missing)."""

    SCT_PRE_ATT: int | None = None
    SCT_EPI_LOC: int | None = None
    SCT_LONG_DIA: float | None = None
    SCT_PERP_DIA: float | None = None
    SCT_MARGINS: int | None = None
    age: float | None = None
    diagemph: int | None = None
    gender: int | None = None
    famfather: int | None = None
    fammother: int | None = None
    fambrother: int | None = None
    famsister: int | None = None
    famchild: int | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any], record: str = "?") -> EHR:
        """Build a validated EHR from a dict or table row; absent keys are missing values.

        Keys are matched case-insensitively, so NLST's lower-case `sct_long_dia` works; keys
        other than the fields and EXTRA_KEYS are errors (see the module docstring).
        """
        given = _field_keys(row, record)
        values = {name: _parse_field(name, given.get(name), record) for name in EHR_FIELDS}
        ehr = cls(**values)
        ehr.check(record)
        return ehr

    def check(self, record: str = "?") -> None:
        """Validate codes, ranges and the cross-field rule (perpendicular <= longest)."""
        for name in EHR_FIELDS:
            _parse_field(name, getattr(self, name), record)
        long, perp = self.SCT_LONG_DIA, self.SCT_PERP_DIA
        if long is not None and perp is not None and perp > long + 0.05:
            raise EHRError(f"record {record}: field SCT_PERP_DIA = {perp:g} exceeds SCT_LONG_DIA = {long:g}")

    def as_dict(self) -> dict[str, float | int | None]:
        """Field name -> value (None for missing)."""
        return asdict(self)

    def family_history(self) -> bool | None:
        """True if any first-degree relative had lung cancer, False if all five are known 'no',
        None otherwise (unknown). Fixes the authors' `a or b or c == 1` precedence bug."""
        values = [getattr(self, f) for f in FAMILY]
        if any(v == 1 for v in values):
            return True
        if all(v == 0 for v in values):
            return False
        return None

    def missing(self) -> list[str]:
        """Names of the missing fields."""
        return [f.name for f in fields(self) if getattr(self, f.name) is None]


def _patient_clause(ehr: EHR) -> str:
    """'63 years old male with family history of lung cancer (father)' from known fields only."""
    who = []
    if ehr.age is not None:
        who.append(f"{int(round(ehr.age))} years old")
    who.append(GENDER[ehr.gender] if ehr.gender is not None else "patient")
    extras = []
    history = ehr.family_history()
    if history:
        relatives = [RELATIVE[f] for f in FAMILY if getattr(ehr, f) == 1]
        extras.append(f"family history of lung cancer ({', '.join(relatives)})")
    elif history is False:
        extras.append("no family history of lung cancer")
    if ehr.diagemph == 1:
        extras.append("emphysema")
    elif ehr.diagemph == 0:
        extras.append("no emphysema")
    clause = " ".join(who)
    return f"{clause} with {' and '.join(extras)}" if extras else clause


def _nodule_sentence(ehr: EHR) -> str:
    """'A part solid nodule with spiculated margin, 12.4 mm by 9.8 mm, is present in the ...'."""
    kind = ATTENUATION.get(ehr.SCT_PRE_ATT) if ehr.SCT_PRE_ATT not in (None, 7, 9) else None
    noun = f"{kind} nodule" if kind else "nodule"
    article = "An" if noun[0] in "aeiou" else "A"
    text = f"{article} {noun}"
    if ehr.SCT_MARGINS in (1, 2, 3):
        text += f" with {MARGINS[ehr.SCT_MARGINS]} margin"
    long, perp = ehr.SCT_LONG_DIA, ehr.SCT_PERP_DIA
    if long is not None and perp is not None:
        text += f", {long:.1f} mm by {perp:.1f} mm,"
    elif long is not None:
        text += f", {long:.1f} mm in longest diameter,"
    elif perp is not None:
        text += f", {perp:.1f} mm in perpendicular diameter,"
    text += " is present"
    if ehr.SCT_EPI_LOC == 8:
        text += " in the lung"
    elif ehr.SCT_EPI_LOC is not None:
        text += f" in the {LOBE[ehr.SCT_EPI_LOC]}"
    return text + "."


def report_sentence(ehr: EHR) -> str:
    """The radiology-report prompt of paper Figures 1 and 4, from baseline-year fields only.

    Missing fields are left out of the text, never guessed; no label or follow-up field enters.
    """
    return ("Lung cancer screening with low dose computed tomography performed for this "
            f"{_patient_clause(ehr)}. {_nodule_sentence(ehr)}")
