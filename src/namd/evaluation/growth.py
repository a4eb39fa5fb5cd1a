"""Does the generator predict change? Growth of the virtual follow-ups by label.

In a cohort where malignant nodules grow and benign ones do not, a generator that reads the
context should make malignant follow-ups grow more than benign ones; one that only copies its
baseline shows no such gap. Measured on the evaluated split with the size of
`namd.evaluation.measure` (`nodule_size_mm`): the equivalent diameter 2 sqrt(A / pi) of the
nodule segmented at the crop centre, the mask whose longest diameter Table 1 reports.

Until issue 26 the size was the equivalent diameter of all tissue above -400 HU within 10 mm of
the centre, chosen because a connected-component size could jump to a vessel or the chest
wall touching the nodule. The one measurer cuts attached vessels by an opening, and the area
of a mask moves far less than its longest axis when a vessel survives; on the synthetic demo
cohort (600 pairs, the recorded SCT_LONG_DIA as truth; benchmarks/bench_measure.py,
results/measure.md) it agrees better with the recorded size (r 0.87 / 0.91 at baseline /
follow-up against 0.46 / 0.67) and gives a malignant - benign growth gap nearer the recorded
one (4.7 mm against 3.8; recorded 5.3), with as much power (gap / standard error 11.5 against
11.9). Its growth follows the recorded growth a little less closely overall (r 0.77 against
0.83, Spearman 0.58 against 0.61; per nodule type it is as close or closer), because a few
faint ground-glass nodules let vessels into the mask (99th percentile of the growth error
6.5 mm against 5.4).

- real growth: size of the real follow-up minus size of the real baseline;
- generated growth of a variant: mean size over its K samples minus the size of the baseline
  passed through that variant's VAE (the same blur as its samples, so the VAE's smoothing does
  not pass for change);
- per label the mean growth, the malignant-minus-benign difference (the "gap") and its
  bootstrap interval (nodules resampled within each label, seeded);
- per ablation the paired interval of (NAMD's gap - the ablation's gap), nodules resampled
  jointly, and per variant its benign growth minus the real benign growth (the bias the
  generator adds where nothing should change).

Written as the `growth` block of RUN/eval/metrics.json (docs/metrics-schema.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from namd.config import EvalConfig
from namd.config.methods import REFERENCE
from namd.evaluation.measure import Measurements, measure
from namd.evaluation.rows import generated

SIZE = ("equivalent diameter 2 sqrt(A / pi) of the nodule segmented at the crop centre "
        "(namd.evaluation.measure: the mask whose longest diameter Table 1 reports)")


def nodule_size_mm(crops: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """The growth size of crops (N, ..., H, W) -> (N, ...) mm, one spacing per nodule."""
    return measure(crops, spacing_mm).equivalent_mm


def _interval(draws: list[float] | np.ndarray, level: float) -> list[float]:
    """Percentile interval at `level` (0.95 -> the 2.5th and 97.5th percentiles)."""
    tail = round(50.0 * (1.0 - level), 10)  # exact 2.5 at 0.95, like the benchmark's
    return [float(np.percentile(draws, tail)), float(np.percentile(draws, 100.0 - tail))]


def label_difference(values: np.ndarray, label: np.ndarray, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of `values` (N,) per label, malignant - benign, and its bootstrap interval
    (`n` resamples of the nodules within each label)."""
    values, label = np.asarray(values, dtype=np.float64), np.asarray(label)
    mal, ben = values[label == 1], values[label == 0]
    if not len(mal) or not len(ben):
        raise ValueError(f"growth: needs nodules of both labels, has {len(mal)} malignant and "
                         f"{len(ben)} benign")
    rng = np.random.default_rng(seed)
    boots = [rng.choice(mal, len(mal)).mean() - rng.choice(ben, len(ben)).mean() for _ in range(n)]
    return {"malignant_mean_mm": float(mal.mean()), "benign_mean_mm": float(ben.mean()),
            "difference_mm": float(mal.mean() - ben.mean()),
            "difference_ci95": _interval(boots, level),
            "n_malignant": int(len(mal)), "n_benign": int(len(ben))}


def paired_gap_ci(a: np.ndarray, b: np.ndarray, label: np.ndarray, n: int = 2000, seed: int = 0,
                  level: float = 0.95) -> list[float]:
    """Bootstrap interval of (label gap of a) - (label gap of b), a and b (N,) measured on the
    same nodules, which are resampled jointly (within each label)."""
    a, b, label = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), np.asarray(label)
    rng = np.random.default_rng(seed)
    mal, ben = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    out = []
    for _ in range(n):
        m, q = rng.choice(mal, len(mal)), rng.choice(ben, len(ben))
        out.append((a[m].mean() - a[q].mean()) - (b[m].mean() - b[q].mean()))
    return _interval(out, level)


def sizes_of(measured: Mapping[str, Measurements]) -> dict[str, np.ndarray]:
    """growth_block's `sizes` from rows measured once (evaluate_run's measure_rows): the
    generated rows as they are, "baseline" from copy_baseline and "followup" from
    real_followup (both (N, 1) there)."""
    sizes = {name: m.equivalent_mm for name, m in measured.items() if name in generated()}
    for key, row in (("baseline", "copy_baseline"), ("followup", "real_followup")):
        if row in measured:
            sizes[key] = measured[row].equivalent_mm[:, 0]
    return sizes


def generated_growth(samples: np.ndarray, vae_copy: np.ndarray, spacing_mm: np.ndarray,
                     sample_size: np.ndarray | None = None) -> np.ndarray:
    """Per nodule: mean size over the K samples (N, K, H, W) minus the size of the baseline
    through the variant's VAE (N, H, W) -> (N,) mm. `sample_size` (N, K): the samples' sizes
    when already measured."""
    if samples.ndim != 4 or samples.shape[0] != len(vae_copy):
        raise ValueError(f"growth: samples {samples.shape} do not match the VAE copies "
                         f"{np.shape(vae_copy)}")
    if sample_size is None:
        sample_size = nodule_size_mm(samples, spacing_mm)
    return np.asarray(sample_size).mean(1) - nodule_size_mm(vae_copy, spacing_mm)


@dataclass
class Variant:
    """One generated variant for the growth block: its samples and its VAE's copies of the
    baselines, or why it cannot be measured (`status` other than "ok")."""

    crops: np.ndarray | None = None  # (N, K, H, W) HU, in the order of the evaluated pairs
    vae_copy: np.ndarray | None = None  # (N, H, W) HU
    status: str = "ok"
    samples: str = ""  # folder names, for the record
    vae: str = ""


def growth_block(baseline: np.ndarray, followup: np.ndarray, spacing_mm: np.ndarray,
                 label: np.ndarray, variants: dict[str, Variant], ev: EvalConfig,
                 sizes: Mapping[str, np.ndarray] | None = None) -> dict:
    """The `growth` block of metrics.json from the real crops (N, H, W), the labels (N,) and
    every generated variant (a variant whose status is not "ok" keeps only its status).
    `sizes`: sizes (mm, `nodule_size_mm`) already measured, by name: "baseline" and
    "followup" (N,), a variant's samples (N, K); whatever is absent is measured here."""
    sizes = sizes or {}

    def size(name: str, crops: np.ndarray) -> np.ndarray:
        return sizes[name] if name in sizes else nodule_size_mm(crops, spacing_mm)

    def stats(values: np.ndarray) -> dict:
        return label_difference(values, label, ev.bootstrap, ev.seed, ev.ci)

    base = size("baseline", baseline)
    real = size("followup", followup) - base
    real_stats = stats(real)
    block: dict = {
        "size": SIZE,
        "bootstrap": {"n": ev.bootstrap, "level": ev.ci, "seed": ev.seed,
                      "resampled": "nodules, within each label"},
        "baseline_size": stats(base), "real_followup": real_stats, "generated": {}}
    grown: dict[str, np.ndarray] = {}
    for name, v in variants.items():
        if v.status != "ok" or v.crops is None or v.vae_copy is None:
            block["generated"][name] = {"status": v.status if v.status != "ok" else "not run"}
            continue
        grown[name] = generated_growth(v.crops, v.vae_copy, spacing_mm, sizes.get(name))
        entry = {"status": "ok", "samples": v.samples, "vae": v.vae, "k": int(v.crops.shape[1]),
                 **stats(grown[name])}
        entry["benign_minus_real_benign_mm"] = entry["benign_mean_mm"] - real_stats["benign_mean_mm"]
        block["generated"][name] = entry
    if REFERENCE in grown:
        for name in (n for n in grown if n != REFERENCE):
            gap = (block["generated"][REFERENCE]["difference_mm"]
                   - block["generated"][name]["difference_mm"])
            block["generated"][name]["vs_namd"] = {
                "gap_difference_mm": gap,
                "ci95": paired_gap_ci(grown[REFERENCE], grown[name], label, ev.bootstrap,
                                      ev.seed, ev.ci)}
    return block
