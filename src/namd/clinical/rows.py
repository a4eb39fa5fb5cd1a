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
from namd.cohort.known_futures import KnownFutures
from namd.cohort.store import Cohort
from namd.config.readout import ReadoutConfig
from namd.evaluation.measure import Measurements, measure

BASELINE_COPY, REAL_FOLLOWUP, KNOWN_FUTURES = "baseline_copy", "real_followup", "known_futures"


def _value(v: Any) -> float | None:
    """A manifest value as a number or None (NaN, missing)."""
    return None if v is None or pd.isna(v) else float(v)


class PairSet:
    """The test pairs read once: crops measured, records, real outcomes, Brock, recorded growth."""

    def __init__(self, cohort: Cohort, pairs: pd.DataFrame, cfg: ReadoutConfig,
                 measured: Mapping[str, Measurements] | None = None):
        self.cfg, self.pairs = cfg, pairs.reset_index(drop=True)
        self.spacing = float(cohort.meta.get("pixel_spacing_mm", 1.0))
        self.measured = measured or {}
        self.base = cohort.images(self.pairs["baseline_index"].astype(np.int64).to_numpy())
        self.follow = cohort.images(self.pairs["followup_index"].astype(np.int64).to_numpy())
        self.base_m = self._measure(BASELINE_COPY, self.base[:, None]).take((slice(None), 0))
        self.follow_m = self._measure(REAL_FOLLOWUP, self.follow[:, None]).take((slice(None), 0))
        self.ehrs = [Cohort.ehr(row) for _, row in self.pairs.iterrows()]
        self.keys = self.pairs["pair_id"].astype(str).tolist()
        self.brock = [_value(brock_probability(e)) for e in self.ehrs]
        self.recorded = [recorded_growth(e, EHR(SCT_LONG_DIA=_value(row.get("followup_SCT_LONG_DIA")),
                                               SCT_PERP_DIA=_value(row.get("followup_SCT_PERP_DIA"))))
                         for e, (_, row) in zip(self.ehrs, self.pairs.iterrows(), strict=True)]
        self._outcomes: list[dict[str, Any]] | None = None

    def _measure(self, name: str, crops: np.ndarray) -> Measurements:
        """measure() of a row's crops (N, K, H, W), or its measurements when already given
        (namd evaluate measures every row once), checked to be of the same shape."""
        given = self.measured.get(name)
        if given is None:
            return measure(crops, self.spacing)
        if given.longest_mm.shape != crops.shape[:2]:
            raise ValueError(f"readout: the measurements of {name} are {given.longest_mm.shape}, "
                             f"its crops {crops.shape[:2]}")
        return given

    def readouts(self, samples: np.ndarray, name: str = "") -> list[dict[str, Any]]:
        """The readout of each pair from its samples (N, K, H, W) HU (row `name`'s
        measurements reused when given)."""
        sm = self._measure(name, samples)
        return [readout(self.base_m.take(i), sm.take(i), self.ehrs[i], self.cfg, self.keys[i])
                for i in range(len(self.keys))]

    def outcomes(self, readouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What happened to each pair, its type from the readout's attenuation (cached)."""
        if self._outcomes is None:
            self._outcomes = [
                real_outcome(self.base_m.take(i), self.follow_m.take(i), r["attenuation"]["type"],
                             self.ehrs[i].SCT_MARGINS == 1, self.cfg)
                for i, r in enumerate(readouts)]
        return self._outcomes

    def score(self, samples: np.ndarray, name: str = "") -> dict[str, Any]:
        """One row: its readouts scored against what happened, and its not-measurable share."""
        reads = self.readouts(samples, name)
        row = score_row(reads, self.outcomes(reads), self.brock, self.recorded)
        counted = sum(r["not_measurable"]["count"] for r in reads)
        row["not_measurable_share"] = counted / max(sum(r["k"] for r in reads), 1)
        row["k"] = int(samples.shape[1])
        return row


def score_rows(cohort: Cohort, pairs: pd.DataFrame, rows: Mapping[str, np.ndarray],
               cfg: ReadoutConfig, futures: np.ndarray | None = None,
               measured: Mapping[str, Measurements] | None = None) -> dict[str, dict[str, Any]]:
    """Every row's score on `pairs` (the baseline's copy, the known futures when given, the
    generated rows (N, K, H, W) aligned with `pairs`, then the real follow-up). `measured`:
    measure() of rows already measured, by row name (BASELINE_COPY and REAL_FOLLOWUP as
    (N, 1)), so namd evaluate measures each crop once."""
    data = PairSet(cohort, pairs, cfg, measured)
    out = {BASELINE_COPY: data.score(data.base[:, None], BASELINE_COPY)}
    if futures is not None:
        out[KNOWN_FUTURES] = data.score(futures, KNOWN_FUTURES)
    for name, samples in rows.items():
        out[name] = data.score(samples, name)
    out[REAL_FOLLOWUP] = data.score(data.follow[:, None], REAL_FOLLOWUP)
    return out


def readout_block(cohort: Cohort, pairs: pd.DataFrame, generated: Mapping[str, np.ndarray],
                  measured: Mapping[str, Measurements], known: KnownFutures | str,
                  cfg: ReadoutConfig, futures_measured: Measurements | None = None) -> dict[str, Any]:
    """metrics.json's `readout` block (namd evaluate): score_rows of the generated rows (N, K,
    H, W) aligned with `pairs`, the known futures when the cohort has them for every pair, from
    the rows evaluate measured once (`measured`: each generated row, "copy_baseline" and
    "real_followup"; `futures_measured`: every future of the pairs, (N, F))."""
    ids = pairs["pair_id"].astype(str).tolist()
    futures = None
    given = {BASELINE_COPY: measured["copy_baseline"], REAL_FOLLOWUP: measured["real_followup"],
             **{name: measured[name] for name in generated if name in measured}}
    if not isinstance(known, str) and set(ids) <= set(known.pair_ids):
        futures = known.of(ids)[:, :known.reference]
        if futures_measured is not None:
            given[KNOWN_FUTURES] = futures_measured.take((slice(None), slice(None, known.reference)))
    return {"status": "ok", "n": len(ids), "version": cfg.version, "draws": cfg.draws,
            "rows": score_rows(cohort, pairs, generated, cfg, futures, given)}
