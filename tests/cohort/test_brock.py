"""The Brock (PanCan) full model with spiculation, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from namd.cohort.brock import brock_logit, brock_probability
from namd.cohort.ehr import EHR

REFERENCE = EHR(SCT_PRE_ATT=1, SCT_EPI_LOC=3, SCT_LONG_DIA=10.0, SCT_PERP_DIA=8.0,
                SCT_MARGINS=2, age=62.0, diagemph=0, gender=1, famfather=0, fammother=0,
                fambrother=0, famsister=0, famchild=0)


def _with(**changes) -> EHR:
    return EHR(**{**REFERENCE.as_dict(), **changes})


def test_reference_nodule_matches_the_published_equation():
    # 62-year-old man, 10 mm solid smooth nodule in the right lower lobe, 4 nodules:
    # logit = -6.7892 - 5.3854 * (1 ** -0.5 - 1.58113883)
    expected = -6.7892 - 5.3854 * (1.0 - 1.58113883)
    assert brock_logit(REFERENCE, nodule_count=4) == pytest.approx(expected, abs=1e-9)
    assert brock_probability(REFERENCE, nodule_count=4) == pytest.approx(
        1 / (1 + math.exp(-expected)), abs=1e-12)
    assert brock_probability(REFERENCE, nodule_count=4) == pytest.approx(0.02510, abs=5e-5)


@pytest.mark.parametrize("change,delta", [
    ({"gender": 2}, 0.6011),
    ({"famsister": 1}, 0.2961),
    ({"diagemph": 1}, 0.2953),
    ({"SCT_PRE_ATT": 2}, -0.1276),
    ({"SCT_PRE_ATT": 3}, 0.377),
    ({"SCT_EPI_LOC": 1}, 0.6581),
    ({"SCT_EPI_LOC": 4}, 0.6581),
    ({"SCT_EPI_LOC": 5}, 0.6581),  # lingula counted with the left upper lobe (documented)
    ({"SCT_EPI_LOC": 2}, 0.0),
    ({"SCT_MARGINS": 1}, 0.7729),
    ({"SCT_MARGINS": 3}, 0.0),  # poorly defined is not spiculated
    ({"age": 72.0}, 0.287),
])
def test_each_coefficient(change, delta):
    assert brock_logit(_with(**change), 4) - brock_logit(REFERENCE, 4) == pytest.approx(delta, abs=1e-9)


def test_nodule_count_and_size_terms():
    assert brock_logit(REFERENCE, 1) - brock_logit(REFERENCE, 4) == pytest.approx(3 * 0.0824)
    sizes = [4.0, 6.0, 8.0, 12.0, 20.0, 30.0]
    logits = [brock_logit(_with(SCT_LONG_DIA=d, SCT_PERP_DIA=d / 2)) for d in sizes]
    assert logits == sorted(logits) and logits[-1] - logits[0] > 3.0


def test_missing_inputs():
    assert math.isnan(brock_logit(_with(SCT_LONG_DIA=None)))
    assert math.isnan(brock_probability(_with(SCT_LONG_DIA=None)))
    # Other missing inputs take the reference (neutral) value.
    neutral = _with(age=None, gender=None, diagemph=None, famfather=None, SCT_PRE_ATT=None,
                    SCT_MARGINS=None)
    assert brock_logit(neutral, 4) == pytest.approx(brock_logit(REFERENCE, 4))


def test_probability_bounds():
    high = _with(SCT_LONG_DIA=30.0, SCT_MARGINS=1, SCT_EPI_LOC=1, gender=2, SCT_PRE_ATT=3)
    p = brock_probability(high, 1)
    assert 0.5 < p < 1.0
    assert 0.0 < brock_probability(_with(SCT_LONG_DIA=4.0), 10) < 0.01
