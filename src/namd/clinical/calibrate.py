"""The measurer's own error, measured on the synthetic cohort against the generator's true
diameters (not the recorded ones, which add reader noise and whole-millimetre rounding): per
nodule type the bias and sd of one image's mean diameter, the sd of a measured growth, the
solid component's bias and sd (part-solid), and how often the image's attenuation class
(readout.image_kind) matches the true type. The defaults of namd.config.readout come from here
(`python benchmarks/readout.py error`). The project has no real nodule with a diameter
reference: on real crops the error is unmeasured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from namd.clinical import lungrads as L
from namd.clinical.readout import image_kind
from namd.cohort.synthetic import PAIRED, iter_nodules, render_nodule
from namd.config.data import DataConfig, SynthConfig
from namd.config.readout import ReadoutConfig
from namd.evaluation.measure import measure


def synthetic_truth(synth: SynthConfig, data: DataConfig, pairs: int) -> dict[str, np.ndarray]:
    """Rendered pairs (pairs, 2, H, W) of the synthetic cohort with their true mean diameters,
    solid components and types at both visits (each (pairs, 2))."""
    crops, mean, solid, kind = [], [], [], []
    for nod in iter_nodules(synth, PAIRED, pairs):
        images, _ = render_nodule(nod, synth.seed, PAIRED, data)
        crops.append(np.stack(images))
        m = ((nod.long_mm + nod.perp_mm) / 2, (nod.followup_long_mm + nod.followup_perp_mm) / 2)
        mean.append(m)
        solid.append((nod.core_fraction * m[0], nod.followup_core_fraction * m[1]))
        kind.append((L.ATTENUATION_KIND[nod.attenuation], L.ATTENUATION_KIND[nod.followup_attenuation]))
    return {"crops": np.stack(crops), "mean": np.array(mean), "solid": np.array(solid),
            "kind": np.array(kind)}


def measurer_error(synth: SynthConfig, data: DataConfig, pairs: int,
                   cfg: ReadoutConfig | None = None) -> dict[str, Any]:
    """Per baseline type: n, bias and sd of the mean diameter (both visits pooled), sd of the
    growth, solid-component bias and sd (part-solid), the class agreement; and overall the
    share of crops not measurable."""
    cfg = cfg or ReadoutConfig()
    truth = synthetic_truth(synth, data, pairs)
    m = measure(truth["crops"], data.pixel_spacing_mm)
    ok = m.measurable
    err = m.mean_mm - truth["mean"]
    classes = image_kind(m.solid_mm, m.equivalent_mm, cfg)
    out: dict[str, Any] = {"pairs": pairs, "not_measurable": int((~ok).sum()), "crops": int(ok.size)}
    for kind in L.KINDS:
        same = (truth["kind"] == kind) & ok
        both = (truth["kind"][:, 0] == kind) & ok.all(axis=1) & (truth["kind"][:, 1] == kind)
        growth = err[both, 1] - err[both, 0]
        row = {"n": int(same.sum()), "bias_mm": float(err[same].mean()),
               "size_sd_mm": float(err[same].std()), "mae_mm": float(np.abs(err[same]).mean()),
               "growth_n": int(both.sum()), "growth_sd_mm": float(growth.std()),
               "class_agreement": float((classes[same] == kind).mean())}
        if kind == L.PART_SOLID:
            s_err = (m.solid_mm - truth["solid"])[same]
            row.update(solid_bias_mm=float(s_err.mean()), solid_sd_mm=float(s_err.std()))
        out[kind] = row
    return out
