"""The embedded synthetic longitudinal cohort: a stand-in for NLST pairs and for the
single-time-point crops (LUNA16 / LUNA25 / DLCS) that pre-train the prior.

    generate_cohort(out, cfg, data)        write a cohort (namd.cohort.store format) atomically
    build_synthetic_cohort(out, config)    the same plus contact_sheet.png and run_info.json
                                           inside it, all published at once (`namd synth`, demo)

Patients and nodules come from `patients` (EHR, Brock-drawn labels, growth), images from
`render` (HU crops). Every patient is drawn from its own seeded stream, so a cohort is
byte-identical for a given seed and a patient is the same whatever the cohort's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from namd.cohort.store import CohortWriter, assign_splits
from namd.cohort.synthetic.patients import Nodule, _seq, intercept_shift, synth_patient
from namd.cohort.synthetic.render import NOISE_SD_HU, State, draw_scene, draw_shape, render
from namd.config import NamdConfig
from namd.config.data import DataConfig, SynthConfig
from namd.run.provenance import atomic_dir, progress, write_run_info

__all__ = ["generate_cohort", "build_synthetic_cohort", "iter_nodules", "render_nodule",
           "GENERATOR", "PAIRED", "UNPAIRED"]

GENERATOR = "namd-synth-1"
PAIRED, UNPAIRED = 0, 1  # stream numbers: pairs and unpaired crops never share a patient
PREFIX = {PAIRED: "P", UNPAIRED: "U"}
# Follow-up appearance of malignant nodules (beyond size): denser, more lobulated, longer
# spicules. Approximate; it makes progression visible, as in the paper's real follow-ups.
MALIGNANT_SOLID_DENSITY_GAIN = (5.0, 20.0)
MALIGNANT_SUBSOLID_DENSITY_GAIN = (40.0, 120.0)
RESOLVING_DENSITY_LOSS = 150.0  # HU lost per unit of diameter shrinkage (fading inflammation)


def iter_nodules(cfg: SynthConfig, stream: int, count: int) -> Iterator[Nodule]:
    """The first `count` nodules of a stream, patient after patient (all nodules of a patient
    except possibly the last patient's, cut at `count`)."""
    made, index = 0, 0
    while made < count:
        for nodule in synth_patient(cfg.seed, stream, index, PREFIX[stream], cfg.malignant_share,
                                    cfg.missing_rate, paired=stream == PAIRED):
            if made == count:
                break
            made += 1
            yield nodule
        index += 1


def _states(nodule: Nodule, rng: np.random.Generator) -> tuple[State, State]:
    """The nodule's baseline and one-year state (size, type, density, shape)."""
    base = State(nodule.long_mm, nodule.perp_mm, nodule.attenuation, nodule.core_fraction)
    gain = rng.uniform(*(MALIGNANT_SOLID_DENSITY_GAIN if nodule.attenuation == 1
                         else MALIGNANT_SUBSOLID_DENSITY_GAIN))
    growth = nodule.growth
    if nodule.label == 1:
        shift, lobulation, spicules = gain, min(1.6, 1.0 + (growth - 1.0)), growth * (1 + 0.5 * (growth - 1))
    else:
        shift = -RESOLVING_DENSITY_LOSS * max(0.0, 1.0 - growth)
        lobulation, spicules = 1.0, growth
    follow = State(nodule.followup_long_mm, nodule.followup_perp_mm, nodule.followup_attenuation,
                   nodule.followup_core_fraction, shift, lobulation, spicules)
    return base, follow


def render_nodule(nodule: Nodule, seed: int, stream: int, data: DataConfig,
                  followup: bool = True) -> tuple[list[np.ndarray], bool]:
    """HU crops of a nodule (baseline, and follow-up when asked) and whether a chest wall is
    in view. The scene and noise level are the patient's and nodule's own streams."""
    patient = nodule.patient
    noise_sd = float(_seq(seed, stream, patient.index, 2).uniform(*NOISE_SD_HU))  # the scanner
    rng = _seq(seed, stream, patient.index, 3, nodule.number)
    crop, sp = data.crop_size, data.pixel_spacing_mm
    base, follow = _states(nodule, rng)
    reach = 1.0 + (0.7 * 1.5 if nodule.margin == 1 else 0.1)  # spicules reach beyond the body
    clear = max(base.long_mm, follow.long_mm) / 2 * reach
    scene = draw_scene(rng, crop, sp, patient.emphysema, clear, noise_sd)
    shape = draw_shape(rng, crop, sp, nodule.margin, nodule.label == 1, nodule.attenuation != 1)
    states = (base, follow) if followup else (base,)
    return [render(scene, shape, s, rng, crop, sp) for s in states], scene.chest_wall


def _flags(chest_wall: bool, *more: str) -> str:
    """Semicolon-separated flags of a crop."""
    return ";".join(f for f in (("chest_wall" if chest_wall else ""), *more) if f)


def generate_cohort(out: Path, cfg: SynthConfig, data: DataConfig, overwrite: bool = False) -> Path:
    """Generate `cfg.pairs` baseline/follow-up pairs and `cfg.unpaired` single crops into the
    cohort directory `out` (written atomically); returns its path.

    Splits are by patient (paired and unpaired patients each split with cfg.split_fractions).
    """
    paired = list(iter_nodules(cfg, PAIRED, cfg.pairs))
    single = list(iter_nodules(cfg, UNPAIRED, cfg.unpaired))
    splits = assign_splits([n.patient.patient_id for n in paired], cfg.split_fractions, cfg.seed)
    splits.update(assign_splits([n.patient.patient_id for n in single], cfg.split_fractions,
                                cfg.seed + 1))
    meta = {"generator": GENERATOR, "seed": cfg.seed, "malignant_share": cfg.malignant_share,
            "missing_rate": cfg.missing_rate,
            "brock_intercept_shift": round(intercept_shift(cfg.malignant_share), 6)}
    writer = CohortWriter(Path(out), data.crop_size, data.pixel_spacing_mm, units="HU",
                          source="synthetic", overwrite=overwrite, extra_meta=meta)
    try:
        with progress(total=2 * len(paired) + len(single), desc="synth", unit="crop") as bar:
            _write_pairs(writer, paired, splits, cfg.seed, data, bar)
            _write_unpaired(writer, single, splits, cfg.seed, data, bar)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def build_synthetic_cohort(out: Path, config: NamdConfig, overwrite: bool = False) -> Path:
    """The cohort of `config.synth` with its contact sheet (lung window `config.data.window_hu`)
    and run_info.json (resolved config, seed, versions, `complete: true`) inside it.

    Everything is built in a staging folder and appears under `out` only when complete, so
    a RunDir's `cohort` stage is either absent or finished.
    """
    import os

    from namd.cohort.contact_sheet import write_contact_sheet
    from namd.cohort.store import Cohort

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as staging:
        built = generate_cohort(staging / "cohort", config.synth, config.data)
        write_contact_sheet(Cohort(built), built / "contact_sheet.png", config.data.window_hu)
        write_run_info(built, config, config.synth.seed, stage="cohort", complete=True,
                       generator=GENERATOR)
        for item in built.iterdir():
            os.replace(item, staging / item.name)
        built.rmdir()
    return out


def _provenance(seed: int, stream: int, nodule: Nodule) -> str:
    """Where a synthetic crop came from (enough to regenerate it)."""
    return f"{GENERATOR} seed={seed} stream={stream} patient={nodule.patient.index} nodule={nodule.number}"


def _write_pairs(writer: CohortWriter, nodules: list[Nodule], splits: dict[str, str], seed: int,
                 data: DataConfig, bar) -> None:
    """Render and add every baseline/follow-up pair."""
    for nod in nodules:
        (base, follow), wall = render_nodule(nod, seed, PAIRED, data)
        pid = nod.patient.patient_id
        common = {"patient_id": pid, "nodule_id": nod.nodule_id, "split": splits[pid],
                  "label": nod.label_recorded, "pair_id": f"{pid}-{nod.nodule_id}",
                  "provenance": _provenance(seed, PAIRED, nod)}
        writer.add(base, kind="baseline", timepoint=0, ehr=nod.ehr_baseline,
                   flags=_flags(wall), **common)
        appeared = "solid_core_appeared" if nod.followup_attenuation != nod.attenuation else ""
        writer.add(follow, kind="followup", timepoint=1, ehr=nod.ehr_followup,
                   flags=_flags(wall, appeared), **common)
        bar.update(2)


def _write_unpaired(writer: CohortWriter, nodules: list[Nodule], splits: dict[str, str],
                    seed: int, data: DataConfig, bar) -> None:
    """Render and add every single-time-point crop."""
    for nod in nodules:
        (image,), wall = render_nodule(nod, seed, UNPAIRED, data, followup=False)
        pid = nod.patient.patient_id
        writer.add(image, patient_id=pid, nodule_id=nod.nodule_id, kind="unpaired",
                   split=splits[pid], label=nod.label_recorded, ehr=nod.ehr_baseline,
                   timepoint=0, provenance=_provenance(seed, UNPAIRED, nod), flags=_flags(wall))
        bar.update(1)
