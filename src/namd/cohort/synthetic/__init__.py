"""The embedded synthetic longitudinal cohort: a stand-in for NLST pairs and for the
single-time-point crops (LUNA16 / LUNA25 / DLCS) that pre-train the prior.

    generate_cohort(out, cfg, data)        write a cohort (namd.cohort.store format) atomically,
                                           with the known futures of its test pairs
    build_synthetic_cohort(out, config)    the same plus contact_sheet.png and run_info.json
                                           inside it, all published at once (`namd synth`, demo)

Patients and nodules come from `patients` (EHR, Brock-drawn labels, growth), images from
`render` (HU crops), what a follow-up draws and the known futures from `futures`. Every
patient is drawn from its own seeded stream, so a cohort is byte-identical for a given seed
and a patient is the same whatever the cohort's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from namd.cohort.known_futures import KnownFuturesWriter, futures_meta
from namd.cohort.store import CohortWriter, assign_splits
from namd.cohort.synthetic.futures import STREAMS, nodule_scene, render_futures
from namd.cohort.synthetic.patients import Nodule, intercept_shift, synth_patient
from namd.cohort.synthetic.render import render
from namd.config import NamdConfig
from namd.config.data import DataConfig, SynthConfig
from namd.run.provenance import atomic_dir, progress, write_run_info

__all__ = ["generate_cohort", "build_synthetic_cohort", "iter_nodules", "render_nodule",
           "GENERATOR", "PAIRED", "UNPAIRED"]

GENERATOR = "namd-synth-1"
PAIRED, UNPAIRED = 0, 1  # stream numbers: pairs and unpaired crops never share a patient
PREFIX = {PAIRED: "P", UNPAIRED: "U"}


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


def render_nodule(nodule: Nodule, seed: int, stream: int, data: DataConfig,
                  followup: bool = True) -> tuple[list[np.ndarray], bool]:
    """HU crops of a nodule (baseline, and follow-up when asked) and whether a chest wall is
    in view. The scene and noise level are the patient's and nodule's own streams."""
    drawn = nodule_scene(nodule, seed, stream, data)
    states = (drawn.base, drawn.follow) if followup else (drawn.base,)
    crop, sp = data.crop_size, data.pixel_spacing_mm
    return [render(drawn.scene, drawn.shape, s, drawn.rng, crop, sp) for s in states], \
        drawn.scene.chest_wall


def _flags(chest_wall: bool, *more: str) -> str:
    """Semicolon-separated flags of a crop."""
    return ";".join(f for f in (("chest_wall" if chest_wall else ""), *more) if f)


def generate_cohort(out: Path, cfg: SynthConfig, data: DataConfig, overwrite: bool = False) -> Path:
    """Generate `cfg.pairs` baseline/follow-up pairs and `cfg.unpaired` single crops into the
    cohort directory `out` (written atomically); returns its path.

    Splits are by patient (paired and unpaired patients each split with cfg.split_fractions).
    With cfg.known_futures > 0, every labelled test pair also gets cfg.known_futures reference
    and cfg.held_out_futures held-out futures (namd.cohort.known_futures), inside the same
    atomic cohort.
    """
    paired = list(iter_nodules(cfg, PAIRED, cfg.pairs))
    single = list(iter_nodules(cfg, UNPAIRED, cfg.unpaired))
    splits = assign_splits([n.patient.patient_id for n in paired], cfg.split_fractions, cfg.seed)
    splits.update(assign_splits([n.patient.patient_id for n in single], cfg.split_fractions,
                                cfg.seed + 1))
    meta = {"generator": GENERATOR, "seed": cfg.seed, "malignant_share": cfg.malignant_share,
            "missing_rate": cfg.missing_rate,
            "brock_intercept_shift": round(intercept_shift(cfg.malignant_share), 6)}
    if cfg.known_futures:
        meta["known_futures"] = futures_meta(cfg.known_futures, cfg.held_out_futures, GENERATOR,
                                             STREAMS)
    writer = CohortWriter(Path(out), data.crop_size, data.pixel_spacing_mm, units="HU",
                          source="synthetic", overwrite=overwrite, extra_meta=meta)
    try:
        with progress(total=2 * len(paired) + len(single), desc="synth", unit="crop") as bar:
            _write_pairs(writer, paired, splits, cfg.seed, data, bar)
            _write_unpaired(writer, single, splits, cfg.seed, data, bar)
        if cfg.known_futures:
            _write_futures(writer, paired, splits, cfg, data)
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


def _pair_id(nodule: Nodule) -> str:
    """The pair id of a paired nodule (patient and nodule ids)."""
    return f"{nodule.patient.patient_id}-{nodule.nodule_id}"


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
                  "label": nod.label_recorded, "pair_id": _pair_id(nod),
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


def _write_futures(writer: CohortWriter, nodules: list[Nodule], splits: dict[str, str],
                   cfg: SynthConfig, data: DataConfig) -> None:
    """The known futures of every labelled test pair, in crop order, into the cohort's staging
    folder: each nodule's scene and shape drawn once, then its M + H futures."""
    follow_index = {r["pair_id"]: r["crop_index"] for r in writer.rows if r["kind"] == "followup"}
    test = [n for n in nodules if splits[n.patient.patient_id] == "test" and n.label_recorded is not None]
    count = cfg.known_futures + cfg.held_out_futures
    out = KnownFuturesWriter(writer.tmp, len(test), count, data.crop_size)
    with progress(total=len(test) * count, desc="known futures", unit="crop") as bar:
        for nod in test:
            pair_id = _pair_id(nod)
            out.add(pair_id, follow_index[pair_id], render_futures(nod, cfg.seed, PAIRED, data, count))
            bar.update(count)
    out.close()
