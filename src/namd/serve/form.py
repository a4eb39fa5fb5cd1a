"""The 13 EHR fields as form inputs, and back: coded fields are choices of their official NLST
codes with their meanings (namd.cohort.ehr.CATEGORICAL), age and the diameters are numbers
with their plausible ranges (ehr.CONTINUOUS); every field may be missing.

Form values go through `EHR.from_mapping`, the same parsing and range checks as an EHR JSON
given to `namd predict`, so an out-of-range or non-numeric value is the CLI's one-line
EHRError. The ranges are shown, not enforced by the widget: a widget that refused a value
would give its own message instead of the one naming the field and its range. The numbers are
text inputs (empty = missing) because gradio's number input cannot be empty: it shows and
sends 0 for "no value", which would turn a missing diameter into a measured 0 mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from namd.cohort.ehr import CATEGORICAL, CONTINUOUS, EHR, EHR_FIELDS, RELATIVE, report_sentence

MISSING = "missing"
RECORD = "the form"  # how EHRError messages name the record entered in the page
LABELS = {
    "SCT_PRE_ATT": "attenuation", "SCT_EPI_LOC": "location (lobe)",
    "SCT_LONG_DIA": "longest diameter", "SCT_PERP_DIA": "perpendicular diameter",
    "SCT_MARGINS": "margins", "age": "age", "diagemph": "emphysema", "gender": "gender",
    **{f: f"family: {rel}" for f, rel in RELATIVE.items()},
}
UNITS = {"SCT_LONG_DIA": "mm", "SCT_PERP_DIA": "mm", "age": "years"}


@dataclass(frozen=True)
class FieldSpec:
    """One form input: the EHR field, what the page calls it, and its codes or its range."""

    name: str
    label: str
    choices: tuple[tuple[str, str], ...] = ()  # (shown, value); empty for a number
    range: tuple[float, float] | None = None

    @property
    def coded(self) -> bool:
        """True for a field of official codes (a dropdown), False for a number."""
        return bool(self.choices)

    @property
    def info(self) -> str:
        """The hint under a number: its range and unit (empty for a coded field)."""
        if self.coded:
            return ""
        lo, hi = self.range
        return f"{lo:g} to {hi:g} {UNITS[self.name]}; empty = missing"


def field_specs() -> list[FieldSpec]:
    """The 13 inputs in EHR_FIELDS order (nodule fields, then patient fields)."""
    specs = []
    for name in EHR_FIELDS:
        if name in CATEGORICAL:
            codes = tuple((f"{code}: {meaning}", str(code)) for code, meaning in CATEGORICAL[name].items())
            specs.append(FieldSpec(name, f"{LABELS[name]} ({name})", ((MISSING, MISSING), *codes)))
        else:
            specs.append(FieldSpec(name, f"{LABELS[name]}, {UNITS[name]} ({name})",
                                   range=CONTINUOUS[name]))
    return specs


def _value(raw: Any) -> Any:
    """A widget's value as a record value: blank, 'missing' and None are missing (None)."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", MISSING)):
        return None
    return raw


def ehr_from_form(values: Sequence[Any]) -> EHR:
    """The EHR of the 13 form values (EHR_FIELDS order): an EHRError names a bad field."""
    if len(values) != len(EHR_FIELDS):
        raise ValueError(f"the form gave {len(values)} values for {len(EHR_FIELDS)} EHR fields")
    record = {name: _value(raw) for name, raw in zip(EHR_FIELDS, values, strict=True)}
    return EHR.from_mapping(record, record=RECORD)


def form_from_ehr(ehr: EHR) -> list[str]:
    """The 13 form values showing `ehr`: codes as their choice values, numbers as text."""
    out: list[str] = []
    for name in EHR_FIELDS:
        value = getattr(ehr, name)
        if name in CATEGORICAL:
            out.append(MISSING if value is None else str(int(value)))
        else:
            out.append("" if value is None else f"{float(value):g}")
    return out


def sentence_of(values: Sequence[Any]) -> str:
    """The report sentence the model will read for these form values (ehr.report_sentence)."""
    return report_sentence(ehr_from_form(values))
