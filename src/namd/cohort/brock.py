"""The Brock (PanCan) full model with spiculation (McWilliams et al., NEJM 2013).

Used to draw the synthetic cohort's labels and as a clinical baseline in the evaluation.
"""

from __future__ import annotations

import math

from namd.cohort.ehr import EHR

UPPER_LOBES = (1, 4, 5)  # RUL, LUL, and the lingula (anatomically part of the left upper lobe)


def brock_logit(ehr: EHR, nodule_count: int = 1) -> float:
    """Log-odds of malignancy; NaN when the longest diameter is missing.

    Other missing inputs take the model's reference value (age 62, absent risk factor, solid),
    which adds nothing to the logit: a neutral choice, documented rather than hidden.
    """
    if ehr.SCT_LONG_DIA is None:
        return math.nan
    age = ehr.age if ehr.age is not None else 62.0
    logit = -6.7892 + 0.0287 * (age - 62)
    logit += 0.6011 if ehr.gender == 2 else 0.0
    logit += 0.2961 if ehr.family_history() else 0.0
    logit += 0.2953 if ehr.diagemph == 1 else 0.0
    logit -= 5.3854 * ((ehr.SCT_LONG_DIA / 10.0) ** -0.5 - 1.58113883)
    logit += {2: -0.1276, 3: 0.377}.get(ehr.SCT_PRE_ATT, 0.0)
    logit += 0.6581 if ehr.SCT_EPI_LOC in UPPER_LOBES else 0.0
    logit -= 0.0824 * (nodule_count - 4)
    logit += 0.7729 if ehr.SCT_MARGINS == 1 else 0.0
    return logit


def brock_probability(ehr: EHR, nodule_count: int = 1) -> float:
    """Probability of malignancy from the Brock full model (NaN without a diameter)."""
    logit = brock_logit(ehr, nodule_count)
    return math.nan if math.isnan(logit) else 1.0 / (1.0 + math.exp(-logit))
