"""A record's values are what they claim (issue 27): a boolean, a complex number or any other
object where a code or a number is expected is refused naming the record and the field,
never read as 1 (`gender: true` as male) or as its real part."""

from __future__ import annotations

import json

import numpy as np
import pytest

from namd.cohort.ehr import EHR, EHRError
from namd.inference.patient import load_patient


@pytest.mark.parametrize("value, kind", [(True, "a boolean"), (False, "a boolean"),
                                         (np.bool_(True), "a boolean"),
                                         (1 + 0j, "a complex number"),
                                         (np.complex128(2), "a complex number"),
                                         ([1], "of type list"), ({"code": 1}, "of type dict"),
                                         (b"1", "of type bytes"), (np.array([1]), "of type ndarray")])
def test_a_code_that_is_not_a_number_is_refused_naming_the_field(value, kind):
    with pytest.raises(EHRError, match=rf"record r7: field gender = .* is {kind}, not a code or "
                                       r"number; give a code: 1 \(male\), 2 \(female\)") as err:
        EHR.from_mapping({"gender": value}, record="r7")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", ["SCT_LONG_DIA", "age", "famfather", "diagemph", "SCT_MARGINS"])
def test_a_boolean_is_refused_for_every_kind_of_field(field):
    with pytest.raises(EHRError, match=rf"field {field} = True is a boolean"):
        EHR.from_mapping({field: True}, record="r")


def test_a_constructed_record_with_a_boolean_fails_its_check():
    with pytest.raises(EHRError, match="field gender = True is a boolean"):
        EHR(gender=True).check("r")


def test_gender_true_in_a_json_record_names_the_file(tmp_path):
    path = tmp_path / "patient.json"
    path.write_text(json.dumps({"gender": True, "SCT_LONG_DIA": 9.0}))
    with pytest.raises(EHRError, match=r"patient\.json: field gender = True is a boolean"):
        load_patient(path)


def test_numbers_in_every_usual_form_still_parse():
    ehr = EHR.from_mapping({"gender": np.int64(2), "age": np.float32(61.5), "SCT_LONG_DIA": "12.5",
                            "SCT_PERP_DIA": 8, "famfather": np.uint8(0), "SCT_MARGINS": "1",
                            "diagemph": np.array(1)}, record="r")
    assert (ehr.gender, ehr.age, ehr.SCT_LONG_DIA, ehr.SCT_PERP_DIA, ehr.famfather,
            ehr.SCT_MARGINS, ehr.diagemph) == (2, 61.5, 12.5, 8.0, 0, 1, 1)
    assert EHR.from_mapping({"gender": None, "age": float("nan"), "famfather": ".M"}).missing() \
        == list(EHR().as_dict())
