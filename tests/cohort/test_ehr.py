"""The EHR model: codes, validation, missing values and the report sentence."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from namd.cohort.ehr import (
    ATTENUATION,
    CATEGORICAL,
    EHR,
    EHR_FIELDS,
    EXTRA_KEYS,
    FAMILY,
    LOBE,
    MARGINS,
    EHRError,
    is_missing,
    record_id,
    report_sentence,
)

FULL = {"SCT_PRE_ATT": 1, "SCT_EPI_LOC": 1, "SCT_LONG_DIA": 12.4, "SCT_PERP_DIA": 9.8,
        "SCT_MARGINS": 1, "age": 63, "diagemph": 1, "gender": 1, "famfather": 1, "fammother": 0,
        "fambrother": 0, "famsister": 0, "famchild": 0}


def test_thirteen_fields_with_official_codes():
    assert len(EHR_FIELDS) == 13
    # NLST data dictionary: margins 1 = spiculated, 3 = poorly defined (not spiculated).
    assert MARGINS[1] == "spiculated" and MARGINS[2] == "smooth" and MARGINS[3] == "poorly defined"
    assert ATTENUATION[1] == "solid" and ATTENUATION[2] == "ground glass" and ATTENUATION[3] == "part solid"
    assert LOBE[5] == "lingula" and LOBE[4] == "left upper lobe"


def test_full_record_parses():
    ehr = EHR.from_mapping(FULL, record="p1")
    assert ehr.SCT_LONG_DIA == pytest.approx(12.4) and ehr.gender == 1
    assert ehr.missing() == []


@pytest.mark.parametrize("field,value", [
    ("SCT_LONG_DIA", -3), ("SCT_PERP_DIA", -0.5), ("age", 300), ("age", 5),
    ("SCT_MARGINS", 4), ("SCT_PRE_ATT", 5), ("SCT_EPI_LOC", 7), ("gender", 3),
    ("diagemph", 2), ("famsister", -1), ("SCT_MARGINS", 1.5), ("age", "sixty"),
    ("SCT_LONG_DIA", "inf"),
])
def test_invalid_value_names_field_value_and_record(field, value):
    with pytest.raises(EHRError) as err:
        EHR.from_mapping({**FULL, field: value}, record="patient 100012 / nodule 2")
    msg = str(err.value)
    assert field in msg and "patient 100012 / nodule 2" in msg and str(value) in msg


def test_perpendicular_longer_than_longest_is_an_error():
    with pytest.raises(EHRError, match="SCT_PERP_DIA"):
        EHR.from_mapping({**FULL, "SCT_LONG_DIA": 5, "SCT_PERP_DIA": 9}, record="r")


@pytest.mark.parametrize("value", [None, "", ".", ".M", ".N", ".S", ".E", ".W", " .m ", "NA",
                                   float("nan"), np.float32("nan"), np.float64("nan"), pd.NA])
def test_missing_codes_are_missing_never_zero(value):
    assert is_missing(value)
    ehr = EHR.from_mapping({**FULL, "diagemph": value, "SCT_LONG_DIA": value}, record="r")
    assert ehr.diagemph is None and ehr.SCT_LONG_DIA is None
    assert set(ehr.missing()) == {"diagemph", "SCT_LONG_DIA"}


def test_zero_is_a_value_not_missing():
    assert not is_missing(0) and not is_missing(0.0) and not is_missing("0")
    assert EHR.from_mapping({**FULL, "diagemph": "0"}).diagemph == 0


def test_absent_columns_are_missing_and_keys_case_insensitive():
    """Public NLST tables have no diagemph and no fam* columns: missing, not 'No'."""
    row = {k.lower(): v for k, v in FULL.items() if k != "diagemph" and k not in FAMILY}
    ehr = EHR.from_mapping(row, record="r")
    assert ehr.SCT_LONG_DIA == pytest.approx(12.4)
    assert ehr.diagemph is None and all(getattr(ehr, f) is None for f in FAMILY)
    assert ehr.family_history() is None


def test_family_history_logic():
    no = {f: 0 for f in FAMILY}
    assert EHR(**no).family_history() is False
    assert EHR(**{**no, "famchild": 1}).family_history() is True
    # The authors' `a or b or c == 1` bug would call this True; a single known 'yes' is
    # True and unknowns with no 'yes' are unknown.
    assert EHR(**{**no, "famfather": None}).family_history() is None
    assert EHR(**{**no, "famfather": None, "famsister": 1}).family_history() is True


# ------------------------------------------------------------------ report sentence
EXPECTED_PHRASES = {
    "SCT_PRE_ATT": {1: "A solid nodule", 2: "A ground glass nodule", 3: "A part solid nodule",
                    4: "A fluid density nodule", 6: "A fat density nodule", 7: "A nodule",
                    9: "A nodule"},
    "SCT_EPI_LOC": {1: "in the right upper lobe.", 2: "in the right middle lobe.",
                    3: "in the right lower lobe.", 4: "in the left upper lobe.",
                    5: "in the lingula.", 6: "in the left lower lobe.", 8: "in the lung."},
    "SCT_MARGINS": {1: "with spiculated margin", 2: "with smooth margin",
                    3: "with poorly defined margin", 9: "nodule, 12.4 mm"},
    "gender": {1: "63 years old male", 2: "63 years old female"},
    "diagemph": {0: "and no emphysema", 1: "and emphysema"},
}


def _cases():
    for field, codes in CATEGORICAL.items():
        for code in codes:
            yield field, code


@pytest.mark.parametrize("field,code", list(_cases()))
def test_sentence_for_every_code_of_every_field(field, code):
    base = {**FULL, "famfather": 0}  # all family known 'no' unless the field sets one
    ehr = EHR.from_mapping({**base, field: code}, record="r")
    text = report_sentence(ehr)
    if field in EXPECTED_PHRASES:
        assert EXPECTED_PHRASES[field][code] in text
    elif field in FAMILY:
        relative = field[3:]
        expect = f"family history of lung cancer ({relative})" if code == 1 else "no family history"
        assert expect in text
    _assert_well_formed(text)


@pytest.mark.parametrize("field", EHR_FIELDS)
def test_sentence_leaves_out_each_missing_field(field):
    full = report_sentence(EHR.from_mapping(FULL))
    text = report_sentence(EHR.from_mapping({**FULL, field: None}))
    _assert_well_formed(text)
    assert text != full or field in ("fammother", "fambrother", "famsister", "famchild")
    gone = {"SCT_PRE_ATT": "solid", "SCT_EPI_LOC": "right upper lobe", "SCT_LONG_DIA": "12.4",
            "SCT_PERP_DIA": "9.8", "SCT_MARGINS": "spiculated", "age": "63", "diagemph": "emphysema",
            "gender": "male"}
    if field in gone:
        assert gone[field] not in text
    if field == "famfather":  # the only 'yes' is unknown: nothing is claimed about family
        assert "family" not in text


def test_sentence_matches_paper_style():
    text = report_sentence(EHR.from_mapping(FULL))
    assert text == ("Lung cancer screening with low dose computed tomography performed for this "
                    "63 years old male with family history of lung cancer (father) and emphysema. "
                    "A solid nodule with spiculated margin, 12.4 mm by 9.8 mm, is present in the "
                    "right upper lobe.")


def test_sentence_with_everything_missing():
    assert report_sentence(EHR()) == ("Lung cancer screening with low dose computed tomography "
                                      "performed for this patient. A nodule is present.")


def test_sentence_for_every_combination_of_nodule_codes_and_missing():
    """All combinations of type, lobe, margin and diameters (with missing) read well."""
    options = {f: [None, *CATEGORICAL[f]] for f in ("SCT_PRE_ATT", "SCT_EPI_LOC", "SCT_MARGINS")}
    diameters = [(None, None), (8.0, None), (None, 6.0), (8.0, 6.0)]
    patient = [{}, {"age": 70, "gender": 2}, {f: 1 for f in FAMILY}]
    for att, loc, margin in itertools.product(*options.values()):
        for (long, perp), extra in itertools.product(diameters, patient):
            ehr = EHR(SCT_PRE_ATT=att, SCT_EPI_LOC=loc, SCT_MARGINS=margin, SCT_LONG_DIA=long,
                      SCT_PERP_DIA=perp, **extra)
            _assert_well_formed(report_sentence(ehr))


def _assert_well_formed(text: str) -> None:
    """No guessed or placeholder values, clean punctuation, two sentences."""
    for bad in ("None", "nan", "NaN", "  ", " ,", ",.", " .", "..", "?"):
        assert bad not in text, (bad, text)
    assert text.startswith("Lung cancer screening") and text.endswith(".")
    assert text.count(". ") == 1 and "is present" in text


def test_sentence_is_deterministic_and_uses_only_ehr_fields():
    """The builder sees only the EHR (baseline fields); no label or follow-up can enter."""
    ehr = EHR.from_mapping(FULL)
    assert report_sentence(ehr) == report_sentence(EHR.from_mapping(dict(FULL)))
    extra = {**FULL, "label": 1, "patient_id": "100012", "nodule_id": 2}
    assert report_sentence(EHR.from_mapping(extra)) == report_sentence(ehr)
    assert not math.isnan(ehr.SCT_LONG_DIA)
    with pytest.raises(EHRError, match="followup_SCT_LONG_DIA.*did you mean SCT_LONG_DIA"):
        EHR.from_mapping({**FULL, "followup_SCT_LONG_DIA": 30.0})


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize("typo,field", [("SCT_LONG_DAI", "SCT_LONG_DIA"), ("sct_perp_di", "SCT_PERP_DIA"),
                                        ("Sex", "gender"), ("genders", "gender"), ("agee", "age"),
                                        ("famfathers", "famfather"), ("emphysema", "diagemph")])
def test_unknown_key_names_it_and_the_nearest_field(typo, field):
    """A misspelt key used to be dropped: its value became missing and left the sentence."""
    record = {k: v for k, v in FULL.items() if k != field} | {typo: FULL[field]}
    with pytest.raises(EHRError) as err:
        EHR.from_mapping(record, record="patient.json")
    msg = str(err.value)
    assert msg.startswith("record patient.json: unknown key") and repr(typo) in msg
    assert f"did you mean {field}?" in msg and len(msg.splitlines()) == 1


def test_unknown_key_without_a_near_field_lists_the_fields():
    with pytest.raises(EHRError, match=r"unknown key 'smoker' \(EHR fields: SCT_PRE_ATT, .*famchild; "
                                       r"other keys allowed: .*patient_id"):
        EHR.from_mapping({**FULL, "smoker": 1})


def test_documented_extra_keys_are_ignored_in_any_case():
    ehr = EHR.from_mapping(FULL)
    assert {"patient_id", "nodule_id", "label"} <= EXTRA_KEYS
    for key in EXTRA_KEYS:
        assert EHR.from_mapping({**FULL, key: "x", key.upper(): "y"}) == ehr


def test_the_same_field_twice_is_an_error():
    with pytest.raises(EHRError, match="keys 'age' and 'AGE' both give field age"):
        EHR.from_mapping({**FULL, "AGE": 64})


def test_record_id_from_the_id_keys():
    assert record_id({"patient_id": "P-1", "nodule_id": 2, "age": 60}) == "P-1/2"
    assert record_id({"ID": 7}) == "7" and record_id({"pid": " 100012 "}) == "100012"
    assert record_id({"age": 60}) is None and record_id({"patient_id": None, "id": ""}) is None
