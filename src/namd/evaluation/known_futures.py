"""The known-futures score: how far a row's follow-ups of a nodule are from the *distribution*
of that nodule's one-year futures (issue 26), where the cohort knows several (synthetic
cohorts: namd.cohort.known_futures).

Per evaluated nodule i a row gives K crops X_i, the cohort M reference futures Y_i. The score is
the energy distance (Szekely & Rizzo, "Energy statistics", J. Stat. Plan. Inference 2013), in
its unbiased U-statistic form:

    D(X, Y) = 2 mean_{k,m} |x_k - y_m| - mean_{k != k'} |x_k - x_k'| - mean_{m != m'} |y_m - y_m'|

Its expectation is 0 when X is drawn from the futures' distribution and positive otherwise
(the population energy distance is a metric between distributions with finite first moments);
single estimates scatter around it and can be negative. A row with one crop per nodule
(K = 1: the real follow-up, the copies of the baseline) has no X-spread term: it is scored as a
point forecast, which the score rightly finds worse than the distribution it stands for.

Three features, each scored on its own: the longest diameter (mm) and the mean HU inside the
nodule (namd.evaluation.measure, each future measured with its nodule's pixel spacing), and the
image itself, |a - b| = the RMS HU difference over the crop after clipping both to the lung
window (a constant 10 HU shift is distance 10).

Rows: every row given (generated ones, the copies, the real follow-up), the ceiling
("held_out_futures": the H held-out futures scored as a generator; 0 in expectation, so its value
shows the score's own noise) and "shuffled" (the reference row's samples given to another
nodule by a fixed seeded derangement: the same images, the wrong nodule; must score far worse).
Per row the mean over nodules of each D, and per feature the paired bootstrap interval of its
difference against `copy_baseline` and against the ceiling (nodules resampled jointly: one set
of resamples for every row and feature; eval.bootstrap / eval.ci / eval.seed).

Written as the `known_futures` block of RUN/eval/metrics.json (docs/metrics-schema.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist, pdist

from namd.cohort.known_futures import KnownFutures
from namd.config import EvalConfig
from namd.evaluation.measure import Measurements, measure

CEILING, SHUFFLED, COPY = "held_out_futures", "shuffled", "copy_baseline"
FEATURES = {
    "diameter_mm": "longest diameter of the nodule at the crop centre (namd.evaluation.measure), mm",
    "density_hu": "mean HU inside that nodule (namd.evaluation.measure)",
    "image_hu": "the crop: |a - b| = RMS HU difference over the crop, both clipped to the lung window",
}


@dataclass
class RowFeatures:
    """One row's crops (N, K, H, W) HU and their measured diameter and density (N, K)."""

    crops: np.ndarray
    diameter_mm: np.ndarray
    density_hu: np.ndarray

    @classmethod
    def of(cls, crops: np.ndarray, spacing_mm: np.ndarray,
           measured: Measurements | None = None) -> RowFeatures:
        """Measure the crops unless their measurements are given."""
        m = measure(crops, spacing_mm) if measured is None else measured
        if m.longest_mm.shape != crops.shape[:2]:
            raise ValueError(f"known futures: measurements {m.longest_mm.shape} do not match "
                             f"crops {crops.shape}")
        return cls(crops, m.longest_mm, m.density_hu)

    def taken(self, order: np.ndarray) -> RowFeatures:
        """The same rows, nodule i given row order[i]'s crops."""
        return RowFeatures(self.crops[order], self.diameter_mm[order], self.density_hu[order])


def mean_distance(x: np.ndarray, y: np.ndarray | None = None,
                  window: tuple[float, float] | None = None) -> np.ndarray:
    """Per nodule the mean distance between the items of x (N, A, ...) and those of y
    (N, B, ...), or without y between two different items of x (0 when A = 1: a point
    forecast has no spread) -> (N,). Items are compared by the RMS difference over their
    trailing axes (|a - b| for scalars), after clipping to `window` when given."""
    x = np.asarray(x)
    if y is not None and (len(y) != len(x) or np.shape(y)[2:] != x.shape[2:]):
        raise ValueError(f"known futures: items {x.shape} and {np.shape(y)} cannot be compared")
    if y is None and x.shape[1] < 2:
        return np.zeros(len(x))
    out = np.empty(len(x))
    for i in range(len(x)):
        xi = _items(x[i], window)
        out[i] = (pdist(xi) if y is None else cdist(xi, _items(y[i], window))).mean()
    return out / np.sqrt(float(np.prod(x.shape[2:])))


def _items(a: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """One nodule's items (A, ...) as float64 rows (A, P), clipped to `window` when given."""
    rows = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    return rows if window is None else np.clip(rows, *window)


def energy_distance(x: np.ndarray, y: np.ndarray, window: tuple[float, float] | None = None,
                    y_spread: np.ndarray | None = None) -> np.ndarray:
    """The unbiased energy distance per nodule between x (N, K, ...) and y (N, M, ...), M >= 2
    -> (N,). `y_spread`: mean_distance(y, window=window), when one y meets many x."""
    if np.shape(y)[1] < 2:
        raise ValueError(f"known futures: the energy distance needs >= 2 reference items, "
                         f"got {np.shape(y)[1]}")
    if y_spread is None:
        y_spread = mean_distance(y, window=window)
    return 2.0 * mean_distance(x, y, window) - mean_distance(x, window=window) - y_spread


def derangement(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of range(n) without fixed points (one n-cycle through a seeded
    shuffle), n >= 2: nodule i gets nodule order[i]'s crops."""
    if n < 2:
        raise ValueError(f"known futures: a derangement needs >= 2 nodules, got {n}")
    cycle = np.random.default_rng(seed).permutation(n)
    order = np.empty(n, dtype=int)
    order[cycle] = np.roll(cycle, -1)
    return order


def paired_interval(a: np.ndarray, b: np.ndarray, resamples: np.ndarray, level: float) -> dict:
    """Mean of a - b (N,) and its percentile interval over the given resamples (B, N)."""
    diff = np.asarray(a, dtype=np.float64) - b
    tail = 50.0 * (1.0 - level)
    draws = diff[resamples].mean(axis=1)
    return {"delta": float(diff.mean()),
            "ci95": [float(np.percentile(draws, tail)), float(np.percentile(draws, 100.0 - tail))]}


def _feature_scores(x: RowFeatures, ref: RowFeatures, window: tuple[float, float],
                    ref_spread: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-nodule energy distance of one row for each feature."""
    return {"diameter_mm": energy_distance(x.diameter_mm, ref.diameter_mm, None,
                                           ref_spread["diameter_mm"]),
            "density_hu": energy_distance(x.density_hu, ref.density_hu, None,
                                          ref_spread["density_hu"]),
            "image_hu": energy_distance(x.crops, ref.crops, window, ref_spread["image_hu"])}


def _rows(futures: np.ndarray, crops_of: Mapping[str, np.ndarray], spacing: np.ndarray,
          measured: Mapping[str, Measurements], reference: int, reference_row: str,
          seed: int, futures_measured: Measurements | None
          ) -> tuple[RowFeatures, dict[str, RowFeatures], dict[str, str]]:
    """The reference futures' features, every scored row's, and why a row is missing."""
    fut = RowFeatures.of(futures, spacing, futures_measured)
    ref = RowFeatures(fut.crops[:, :reference], fut.diameter_mm[:, :reference],
                      fut.density_hu[:, :reference])
    rows = {name: RowFeatures.of(np.asarray(c), spacing, measured.get(name))
            for name, c in crops_of.items()}
    missing = {}
    if futures.shape[1] > reference:
        rows[CEILING] = RowFeatures(fut.crops[:, reference:], fut.diameter_mm[:, reference:],
                                    fut.density_hu[:, reference:])
    else:
        missing[CEILING] = "not available: the cohort holds no held-out futures"
    if reference_row in rows and len(spacing) >= 2:
        rows[SHUFFLED] = rows[reference_row].taken(derangement(len(spacing), seed))
    else:
        missing[SHUFFLED] = f"not computed: row {reference_row} is not scored here (or < 2 nodules)"
    return ref, rows, missing


def known_futures_scores(futures: KnownFutures | str, pair_ids: Sequence[str],
                         crops_of: Mapping[str, np.ndarray], spacing_mm: np.ndarray,
                         window: tuple[float, float], reference_row: str, cfg: EvalConfig,
                         measured: Mapping[str, Measurements] | None = None,
                         futures_measured: Measurements | None = None
                         ) -> tuple[dict, dict[str, np.ndarray]]:
    """The `known_futures` block and its per-nodule arrays ("<row>_energy_<feature>", (N,)).

    `crops_of`: row -> (N, K, H, W) HU crops in the order of `pair_ids` (a single-crop row as
    (N, 1, H, W)); `measured`: their measure() results where already computed (same shapes);
    `futures_measured`: the futures' own (measure_futures), else they are measured here.
    `futures` is read_known_futures' result; a str passes through as the status.
    """
    status = _unavailable(futures, pair_ids, crops_of)
    if status is not None:
        return {"status": status}, {}
    images = futures.of(list(pair_ids))
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    ref, rows, missing = _rows(images, crops_of, spacing, measured or {}, futures.reference,
                               reference_row, cfg.seed, futures_measured)
    ref_spread = {"diameter_mm": mean_distance(ref.diameter_mm),
                  "density_hu": mean_distance(ref.density_hu),
                  "image_hu": mean_distance(ref.crops, window=window)}
    scores = {name: _feature_scores(r, ref, window, ref_spread) for name, r in rows.items()}
    resamples = np.random.default_rng(cfg.seed).integers(0, len(spacing), (cfg.bootstrap, len(spacing)))
    entries: dict[str, dict] = {}
    for name, per in scores.items():
        entry: dict = {"status": "ok", **{f"energy_{f}": float(v.mean()) for f, v in per.items()},
                       "n": int(len(spacing)), "k": int(rows[name].crops.shape[1])}
        # against the copy (does it predict change?), the ceiling (how far from the truth?) and
        # the reference method (does an ablation, or the shuffled row, differ from NAMD?)
        for key, other in (("vs_copy_baseline", COPY), ("vs_ceiling", CEILING),
                           (f"vs_{reference_row}", reference_row)):
            if other in scores and not (other == name == reference_row):
                entry[key] = {f: paired_interval(per[f], scores[other][f], resamples, cfg.ci)
                              for f in per}
        entries[name] = entry
    entries.update({name: {"status": why} for name, why in missing.items()})
    block = {"status": "ok", "reference_futures": int(futures.reference),
             "held_out_futures": int(futures.held_out), "n": int(len(spacing)),
             "features": dict(FEATURES),
             "score": "energy distance, unbiased (U-statistic) form; 0 in expectation for a row "
                      "drawn from the futures' distribution",
             "bootstrap": {"n": cfg.bootstrap, "level": cfg.ci, "seed": cfg.seed,
                           "resampled": "nodules, jointly for every row and feature"},
             "rows": entries, "ceiling": CEILING, "shuffled_of": reference_row}
    per_nodule = {f"{name}_energy_{f}": v for name, per in scores.items() for f, v in per.items()}
    return block, per_nodule


def measure_futures(futures: KnownFutures | str, pair_ids: Sequence[str],
                    crops_of: Mapping[str, np.ndarray], spacing_mm: np.ndarray) -> Measurements | None:
    """measure() of every future (N, F) of the evaluated pairs, once for the known-futures block
    and the readout's known-futures row; None when the block cannot be computed."""
    if _unavailable(futures, pair_ids, crops_of) is not None:
        return None
    return measure(futures.of(list(pair_ids)), np.asarray(spacing_mm, dtype=np.float64))


def known_futures_block(futures: KnownFutures | str, pair_ids: Sequence[str],
                        crops_of: Mapping[str, np.ndarray], spacing_mm: np.ndarray,
                        window: tuple[float, float], reference_row: str, cfg: EvalConfig,
                        measured: Mapping[str, Measurements] | None = None) -> dict:
    """The `known_futures` block of metrics.json alone (see known_futures_scores)."""
    return known_futures_scores(futures, pair_ids, crops_of, spacing_mm, window, reference_row,
                                cfg, measured)[0]


def _unavailable(futures: KnownFutures | str, pair_ids: Sequence[str],
                 crops_of: Mapping[str, np.ndarray]) -> str | None:
    """Why the block cannot be computed (a 'not available: ...' line), or None."""
    if isinstance(futures, str):
        return futures
    if futures.reference < 2:
        return (f"not available: {futures.path} holds {futures.reference} reference future(s) "
                "per nodule; the energy distance needs at least 2")
    have = set(futures.pair_ids)
    lacking = [p for p in pair_ids if p not in have]
    if lacking:
        return (f"not available: {futures.path} holds no futures for {len(lacking)} of the "
                f"{len(pair_ids)} evaluated pairs (e.g. {lacking[0]!r}; futures are drawn for "
                "the labelled test pairs)")
    crop = futures.images.shape[2:]
    wrong = [n for n, c in crops_of.items() if np.shape(c)[2:] != crop]
    if wrong:
        return (f"not available: the futures are {crop} crops, row {wrong[0]} has "
                f"{np.shape(crops_of[wrong[0]])[2:]}")
    return None
