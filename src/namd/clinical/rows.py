"""The readout of every row of a run on the test pairs, scored against what happened: shared by
the report's section (namd.evaluation.report.lungrads) and `benchmarks/readout.py`.

Rows: each sampled method's K samples, the baseline's copy (K = 1: no change, the floor), the
known futures when the cohort has them (the synthetic generator's own further futures: an
ideal generator), and the real follow-up itself (K = 1: the real pair read through the drawn
measurement error, the ceiling). Each nodule's readout is seeded by its pair id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from namd.clinical.agreement import real_outcome, recorded_growth, score_row
from namd.clinical.readout import readout
from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR
from namd.cohort.store import Cohort
from namd.config.readout import ReadoutConfig
from namd.evaluation.measure import Measurements, measure

BASELINE_COPY, REAL_FOLLOWUP, KNOWN_FUTURES = "baseline_copy", "real_followup", "known_futures"


def item(m: Measurements, i: int) -> Measurements:
    """Entry i (along the first axis) of Measurements."""
    return Measurements(*(np.asarray(getattr(m, f))[i] for f in m.__dataclass_fields__))


def _value(v: Any) -> float | None:
    """A manifest value as a number or None (NaN, missing)."""
    return None if v is None or pd.isna(v) else float(v)


class PairSet:
    """The test pairs read once: crops measured, records, real outcomes, Brock, recorded growth."""

    def __init__(self, cohort: Cohort, pairs: pd.DataFrame, cfg: ReadoutConfig):
        self.cfg, self.pairs = cfg, pairs.reset_index(drop=True)
        self.spacing = float(cohort.meta.get("pixel_spacing_mm", 1.0))
        self.base = cohort.images(self.pairs["baseline_index"].astype(np.int64).to_numpy())
        self.follow = cohort.images(self.pairs["followup_index"].astype(np.int64).to_numpy())
        self.base_m, self.follow_m = measure(self.base, self.spacing), measure(self.follow, self.spacing)
        self.ehrs = [Cohort.ehr(row) for _, row in self.pairs.iterrows()]
        self.keys = self.pairs["pair_id"].astype(str).tolist()
        self.brock = [_value(brock_probability(e)) for e in self.ehrs]
        self.recorded = [recorded_growth(e, EHR(SCT_LONG_DIA=_value(row.get("followup_SCT_LONG_DIA")),
                                               SCT_PERP_DIA=_value(row.get("followup_SCT_PERP_DIA"))))
                         for e, (_, row) in zip(self.ehrs, self.pairs.iterrows(), strict=True)]
        self._outcomes: list[dict[str, Any]] | None = None

    def readouts(self, samples: np.ndarray) -> list[dict[str, Any]]:
        """The readout of each pair from its samples (N, K, H, W) HU."""
        sm = measure(samples, self.spacing)
        return [readout(item(self.base_m, i), item(sm, i), self.ehrs[i], self.cfg, self.keys[i])
                for i in range(len(self.keys))]

    def outcomes(self, readouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What happened to each pair, its type from the readout's attenuation (cached)."""
        if self._outcomes is None:
            self._outcomes = [
                real_outcome(item(self.base_m, i), item(self.follow_m, i), r["attenuation"]["type"],
                             self.ehrs[i].SCT_MARGINS == 1, self.cfg)
                for i, r in enumerate(readouts)]
        return self._outcomes

    def score(self, samples: np.ndarray) -> dict[str, Any]:
        """One row: its readouts scored against what happened, and its not-measurable share."""
        reads = self.readouts(samples)
        row = score_row(reads, self.outcomes(reads), self.brock, self.recorded)
        counted = sum(r["not_measurable"]["count"] for r in reads)
        row["not_measurable_share"] = counted / max(sum(r["k"] for r in reads), 1)
        row["k"] = int(samples.shape[1])
        return row


def score_rows(cohort: Cohort, pairs: pd.DataFrame, rows: Mapping[str, np.ndarray],
               cfg: ReadoutConfig, futures: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Every row's score on `pairs` (the baseline's copy, the known futures when given, the
    generated rows (N, K, H, W) aligned with `pairs`, then the real follow-up)."""
    data = PairSet(cohort, pairs, cfg)
    out = {BASELINE_COPY: data.score(data.base[:, None])}
    if futures is not None:
        out[KNOWN_FUTURES] = data.score(futures)
    for name, samples in rows.items():
        out[name] = data.score(samples)
    out[REAL_FOLLOWUP] = data.score(data.follow[:, None])
    return out
