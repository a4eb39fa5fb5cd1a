"""One patient's readout over its K virtual follow-ups, as a screening radiologist reads them:
the baseline's Lung-RADS category (from the record and from the image), the distribution of
the follow-up's category and the management of the most likely one, P(growth > 1.5 mm),
P(growth >= 2 mm), the volume-doubling time's median, interval and P(VDT < 400 days), and how
many samples could not be measured.

Every crop is measured by the project's one measurer (namd.evaluation.measure): long and short
axis, mean diameter (Lung-RADS rounding in namd.clinical.lungrads), the solid component, the
attenuation class (from the solid share of the mask, `image_kind`), an approximate volume. A
sample without a nodule at its centre, or whose nodule the crop's edge cuts, is "not
measurable": counted with its reason, never a size of 0, and left out of the probabilities,
which are over the measurable samples.

Honest uncertainty: the measurer's own error (readout.<type>: bias and sd, measured on the
synthetic cohort against the generator's true diameters) enters by `draws` drawn errors per
sample, seeded by readout.seed and the patient's key: the baseline's true size = measured -
bias + e0 (sd size_sd_mm), the growth = measured growth + eg (sd growth_sd_mm). Each (sample,
draw) is categorised, so a probability is a share of K x draws.

Volume-doubling time: VDT = t ln 2 / ln(V1 / V0) with t the pair's interval (readout.
interval_days) and V the sphere of the mean diameter, so V1 / V0 = (d1 / d0)^3; a nodule that
does not grow has "no growth" (an infinite VDT), never a negative time. 400 days is NELSON's
referral threshold (LUSI: <= 400 immediate recall, 400-600 6-month recall, > 600 routine; as
summarised in Cochrane review CD013829). A one-year VDT of 400 days is a 23.5% larger diameter,
+1.4 mm for a 6 mm nodule: below both diameter growth rules, so a VDT from one 2D crop is wide.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from typing import Any

import numpy as np

from namd.clinical import READOUT_NOTICE
from namd.clinical import lungrads as L
from namd.cohort.ehr import EHR
from namd.config.readout import ReadoutConfig
from namd.evaluation.measure import Measurements, measure

VDT_SUSPICIOUS_DAYS = 400.0  # NELSON's referral threshold
NO_GROWTH = "no growth"
LEVEL = 0.95  # the VDT interval


def image_kind(solid_mm: np.ndarray, equivalent_mm: np.ndarray, cfg: ReadoutConfig) -> np.ndarray:
    """The attenuation class of measured crops from the solid share of the nodule's mask
    (solid_mm / equivalent_mm): non-solid below readout.solid_fraction[0], solid from [1]."""
    share = np.asarray(solid_mm) / np.maximum(np.asarray(equivalent_mm), 1e-9)
    lo, hi = cfg.solid_fraction
    return np.where(share < lo, L.NON_SOLID, np.where(share >= hi, L.SOLID, L.PART_SOLID))


def follow_up_kinds(kind: str, image: np.ndarray) -> np.ndarray:
    """The type of follow-up images of a nodule of `kind`: its own, except that a non-solid
    nodule whose image shows a solid component is part-solid (a new solid component)."""
    image = np.asarray(image)
    return np.where((kind == L.NON_SOLID) & (image == L.PART_SOLID), L.PART_SOLID, kind)


def finding(m: Measurements, kind: str, spiculated: bool, cfg: ReadoutConfig,
            follow_up: bool) -> L.Finding:
    """The Lung-RADS finding of one measurable crop (0-d Measurements) as measured less the
    measurer's bias of `kind` (readout.<type>.bias_mm, as the readout's draws), no drawn error:
    the baseline's type is `kind`; a follow-up's is `follow_up_kinds`'."""
    now = str(follow_up_kinds(kind, image_kind(m.solid_mm, m.equivalent_mm, cfg))) if follow_up else kind
    err = cfg.error(kind)
    mean = max(L.round_mm(float(m.mean_mm) - err.bias_mm), 0.1)
    solid = None
    if now == L.PART_SOLID:
        solid = min(max(L.round_mm(float(m.solid_mm) - cfg.part_solid.solid_bias_mm), 0.0), mean)
    return L.Finding(now, mean, solid, spiculated)


def attenuation(ehr: EHR | None, image: str | None) -> tuple[str | None, str]:
    """The nodule's Lung-RADS type and where it comes from: the record's SCT_PRE_ATT when it
    is solid, ground glass or part-solid, else the image's class, saying so."""
    code = ehr.SCT_PRE_ATT if ehr is not None else None
    if code in L.ATTENUATION_KIND:
        return L.ATTENUATION_KIND[code], "record (SCT_PRE_ATT)"
    why = "missing" if code is None else f"code {code}, not a Lung-RADS nodule type"
    if image is None:
        return None, f"not available: the record's attenuation is {why} and the baseline image is not measurable"
    return image, f"image (the record's SCT_PRE_ATT is {why}: the image's class is used)"


def _image_reading(m: Measurements, kind: str | None) -> dict[str, Any]:
    """One measured crop (0-d Measurements) as the readout shows it."""
    reason = str(m.not_measurable_reason())
    if reason:
        return {"measurable": False, "reason": reason}
    return {"measurable": True, "long_mm": L.round_mm(float(m.longest_mm)),
            "short_mm": L.round_mm(float(m.short_mm)),
            "mean_mm": L.mean_diameter(float(m.longest_mm), float(m.short_mm)),
            "solid_mm": L.round_mm(float(m.solid_mm)), "image_class": kind,
            "volume_mm3": round(float(m.volume_mm3)),
            "volume_assumption": "ellipsoid pi/6 x long x short^2 (depth = short axis)"}


def _record_category(ehr: EHR | None, kind: str | None, image: dict[str, Any],
                     new: bool) -> dict[str, Any]:
    """The baseline category from the record's diameters (the solid component, which the
    record lacks, from the image), or why it is not available."""
    if ehr is None or ehr.SCT_LONG_DIA is None:
        return {"status": "not available: the record has no SCT_LONG_DIA"}
    if kind is None:
        return {"status": "not available: no attenuation in the record or the image"}
    notes = []
    long = ehr.SCT_LONG_DIA
    short = ehr.SCT_PERP_DIA
    if short is None:
        short = long
        notes.append("SCT_PERP_DIA missing: the longest diameter stands for the mean")
    solid = None
    if kind == L.PART_SOLID:
        if not image["measurable"]:
            return {"status": "not available: part-solid, and the record has no solid component "
                              f"and the image is not measurable ({image['reason']})"}
        notes.append("solid component from the image (the record has none)")
        solid = min(image["solid_mm"], L.mean_diameter(long, short))
    finding = L.Finding(kind, L.mean_diameter(long, short), solid, _spiculated(ehr))
    return {"status": "ok", **L.baseline_category(finding, new).as_json(), "notes": notes}


def _spiculated(ehr: EHR | None) -> bool:
    """SCT_MARGINS = 1 (spiculated); unknown margins count as not spiculated."""
    return ehr is not None and ehr.SCT_MARGINS == 1


def _seed(cfg: ReadoutConfig, key: str) -> np.random.Generator:
    """The measurement-error draws of one patient: readout.seed and the patient's key."""
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    return np.random.default_rng([cfg.seed, digest])


@functools.lru_cache(maxsize=65536)
def _category(prior: tuple, current: tuple, interval: float, version: str) -> str:
    """followup_category of two (kind, mean, solid, spiculated) tuples (cached: rounded sizes
    repeat across samples and draws)."""
    return L.followup_category(L.Finding(*prior), L.Finding(*current), interval, version).category


def _drawn_sizes(base: Measurements, samples: Measurements, ok: np.ndarray, kind: str,
                 cfg: ReadoutConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Baseline and follow-up sizes (M measurable samples, draws), each with a drawn error."""
    err, shape = cfg.error(kind), (int(ok.sum()), cfg.draws)
    m0 = float(base.mean_mm)
    d0 = np.maximum(m0 - err.bias_mm + rng.normal(0.0, err.size_sd_mm, shape), 0.1)
    growth = (samples.mean_mm[ok] - m0)[:, None] + rng.normal(0.0, err.growth_sd_mm, shape)
    d1 = np.maximum(d0 + growth, 0.1)
    s_err = cfg.part_solid
    s0 = np.clip(float(base.solid_mm) - s_err.solid_bias_mm + rng.normal(0.0, s_err.solid_sd_mm, shape), 0.0, d0)
    s1 = np.clip(s0 + (samples.solid_mm[ok] - float(base.solid_mm))[:, None]
                 + rng.normal(0.0, s_err.solid_sd_mm, shape), 0.0, d1)
    return {"d0": d0, "d1": d1, "s0": s0, "s1": s1, "growth": d1 - d0}


def _categories(sizes: dict[str, np.ndarray], kind: str, kinds: np.ndarray, spiculated: bool,
                cfg: ReadoutConfig) -> np.ndarray:
    """The follow-up category of each (sample, draw): sizes to 0.1 mm (halves up, as
    lungrads.round_mm), each distinct (prior, current) pair categorised once."""
    d0, d1, s0, s1 = (np.floor(sizes[k] * 10.0 + 0.5 + 1e-9) / 10.0 for k in ("d0", "d1", "s0", "s1"))
    now = np.broadcast_to(np.asarray(kinds)[:, None], d0.shape)
    keys = list(zip(now.ravel().tolist(), d0.ravel().tolist(), d1.ravel().tolist(),
                    np.minimum(s0, d0).ravel().tolist(), np.minimum(s1, d1).ravel().tolist(),
                    strict=True))
    cache: dict[tuple, str] = {}
    out = []
    for key in keys:
        if key not in cache:
            k1, a0, a1, b0, b1 = key
            prior = (kind, a0, b0 if kind == L.PART_SOLID else None, spiculated)
            current = (k1, a1, b1 if k1 == L.PART_SOLID else None, spiculated)
            cache[key] = _category(prior, current, cfg.interval_days, cfg.version)
        out.append(cache[key])
    return np.asarray(out, dtype=object).reshape(d0.shape)


def _vdt(sizes: dict[str, np.ndarray], interval_days: float) -> dict[str, Any]:
    """Doubling time over the draws: median, interval, P(VDT < 400 d), the no-growth share."""
    ratio = (sizes["d1"] / sizes["d0"]) ** 3
    with np.errstate(divide="ignore"):
        vdt = np.where(ratio > 1.0, interval_days * math.log(2.0) / np.log(np.maximum(ratio, 1.0)), np.inf)
    vdt = vdt.ravel()
    tail = (1.0 - LEVEL) / 2.0
    lo, med, hi = np.quantile(vdt, [tail, 0.5, 1.0 - tail], method="inverted_cdf")
    return {"median_days": _days(med), "range_days": [_days(lo), _days(hi)], "level": LEVEL,
            "p_below_400_days": float(np.mean(vdt < VDT_SUSPICIOUS_DAYS)),
            "no_growth_share": float(np.mean(~np.isfinite(vdt))),
            "volume": "sphere of the mean diameter: V1 / V0 = (d1 / d0)^3"}


def _days(value: float) -> float | str:
    """A doubling time in whole days, or "no growth" for an infinite one."""
    return NO_GROWTH if not math.isfinite(value) else float(round(value))


def _followup(base: Measurements, samples: Measurements, kind: str, spiculated: bool,
              cfg: ReadoutConfig, key: str) -> dict[str, Any]:
    """The follow-up part of the readout: categories, growth, doubling time."""
    ok = np.asarray(samples.measurable).ravel()
    flat = samples.map(np.ravel)  # K samples as 1-D arrays
    kinds = follow_up_kinds(kind, image_kind(flat.solid_mm[ok], flat.equivalent_mm[ok], cfg))
    sizes = _drawn_sizes(base, flat, ok, kind, cfg, _seed(cfg, key))
    cats = _categories(sizes, kind, kinds, spiculated, cfg)
    counts = Counter(cats.ravel().tolist())
    share = {c: counts.get(c, 0) / cats.size for c in L.CATEGORIES}
    likely = max(L.CATEGORIES, key=lambda c: (share[c], L.CATEGORIES.index(c)))
    growth = sizes["growth"]
    return {"status": "ok", "category_share": share, "most_likely": likely,
            "most_likely_share": share[likely], "management": L.MANAGEMENT[likely],
            "malignancy": L.MALIGNANCY[likely],
            "p_4a_or_higher": float(sum(share[c] for c in L.CATEGORIES if L.at_least_4a(c))),
            "p_growth_gt_1_5mm": float(np.mean(growth > L.GROWTH_MM)),
            "p_growth_ge_2mm": float(np.mean(growth >= 2.0)),
            "growth_median_mm": float(np.median(growth)),
            "vdt": _vdt(sizes, cfg.interval_days), "draws": int(cats.size)}


def readout(base: Measurements, samples: Measurements, ehr: EHR | None, cfg: ReadoutConfig,
            key: str, new: bool = False) -> dict[str, Any]:
    """The readout of one patient from its measured baseline (0-d) and K samples (K,), its
    record (None: no record) and its seed key; `new`: the nodule was not seen before (the
    new-nodule rules for the baseline's category). A JSON-ready dict."""
    measurable = bool(base.measurable)
    img_kind = str(image_kind(base.solid_mm, base.equivalent_mm, cfg)) if measurable else None
    kind, source = attenuation(ehr, img_kind)
    image = _image_reading(base, img_kind)
    reasons = Counter(r for r in np.asarray(samples.not_measurable_reason()).ravel().tolist() if r)
    out: dict[str, Any] = {
        "notice": READOUT_NOTICE, "lung_rads": f"v{cfg.version}", "k": int(np.size(samples.found)),
        "attenuation": {"type": kind, "source": source}, "baseline_image": image,
        "not_measurable": {"count": int(sum(reasons.values())), "reasons": dict(reasons)},
        "interval_days": cfg.interval_days, "new_nodule": new}
    spiculated = _spiculated(ehr)
    out["baseline_category"] = {"record": _record_category(ehr, kind, image, new),
                                "image": _image_category(image, kind, spiculated, new)}
    if not measurable or kind is None:
        out["followup"] = {"status": f"not available: the baseline is not measurable ({image.get('reason', 'no attenuation')})"}
    elif not np.any(samples.measurable):
        out["followup"] = {"status": "not available: no sample is measurable"}
    else:
        out["followup"] = _followup(base, samples, kind, spiculated, cfg, key)
    err = cfg.error(kind) if kind else None
    out["measurement_error"] = ({"type": kind, **err.model_dump(), "draws_per_sample": cfg.draws,
                                 "source": "synthetic cohort vs the generator's true diameters"}
                                if err else None)
    out["summary"] = summary(out)
    return out


def _image_category(image: dict[str, Any], kind: str | None, spiculated: bool,
                    new: bool) -> dict[str, Any]:
    """The baseline category from the measured baseline image."""
    if not image["measurable"]:
        return {"status": f"not available: {image['reason']}"}
    if kind is None:
        return {"status": "not available: no attenuation"}
    solid = min(image["solid_mm"], image["mean_mm"]) if kind == L.PART_SOLID else None
    finding = L.Finding(kind, max(image["mean_mm"], 0.1), solid, spiculated)
    return {"status": "ok", **L.baseline_category(finding, new).as_json()}


def summary(out: dict[str, Any]) -> str:
    """One sentence: the most likely follow-up category and its management, growth and VDT."""
    f = out["followup"]
    if f.get("status") != "ok":
        return f"Follow-up readout {f['status']}."
    v = f["vdt"]
    med = v["median_days"]
    lo, hi = v["range_days"]
    vdt = (f"median doubling time {med:.0f} days" if isinstance(med, float) else "median doubling time: no growth")
    vdt += f" [{_text(lo)}, {_text(hi)}]"
    missing = out["not_measurable"]["count"]
    return (f"Most likely follow-up Lung-RADS {out['lung_rads']} category {f['most_likely']} "
            f"({f['most_likely_share']:.0%} of {out['k'] - missing} measurable futures x "
            f"{f['draws'] // max(out['k'] - missing, 1)} measurement draws): {f['management']}. "
            f"P(growth > 1.5 mm) = {f['p_growth_gt_1_5mm']:.2f}, P(growth >= 2 mm) = "
            f"{f['p_growth_ge_2mm']:.2f}; {vdt}; P(VDT < 400 days) = {v['p_below_400_days']:.2f}"
            + (f"; {missing} of {out['k']} samples not measurable." if missing else "."))


def _text(days: float | str) -> str:
    """A VDT bound as shown."""
    return days if isinstance(days, str) else f"{days:.0f}"


def read_patient(baseline_hu: np.ndarray, samples_hu: np.ndarray, ehr: EHR | None,
                 spacing_mm: float, cfg: ReadoutConfig, key: str, new: bool = False) -> dict[str, Any]:
    """`readout` of a baseline crop (H, W) and its K samples (K, H, W) in HU, measured here."""
    crops = np.concatenate([np.asarray(baseline_hu)[None], np.asarray(samples_hu)])
    m = measure(crops, spacing_mm)
    return readout(m.take(0), m.take(slice(1, None)), ehr, cfg, key, new)
