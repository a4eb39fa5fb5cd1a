"""What a one-year follow-up draws, for the cohort's own follow-up and for its known futures.

A synthetic nodule's follow-up is one draw of a simulator. Its *known futures* are further
draws of the same one-year follow-up of the same nodule, so a generator can be scored against
the distribution of futures rather than one of them (issue 26).

Held fixed (they made the baseline): the patient, the nodule's baseline attributes and label
(the label shapes the baseline too: malignant contours are lobulated), the scene (anatomy,
noise level, chest wall) and the shape. Redrawn (`STREAMS`), from a new stream per future,
`_seq(seed, stream, patient, FUTURES_KEY, nodule, m)`: the growth or benign course and core
development (`draw_growth`), the density / lobulation / spicule gain (`followup_states`) and
the follow-up render's misregistration and noise (`render`), in that order.

    nodule_scene(nodule, seed, stream, data)          scene, shape and states of the cohort's pair
    draw_future(nodule, rng)                          a copy of the nodule with its own course
    future_nodules(nodule, seed, stream, count)       the nodules of futures 0 .. count-1
    render_futures(nodule, seed, stream, data, count) their HU crops (count, crop, crop)

Choices where the issue is silent: the scene keeps the cohort's `clear` (the chest-wall
clearance drawn from the cohort follow-up's size), so a future much larger than the cohort's
follow-up may touch a chest wall the cohort's pair keeps clear; the patient's scanner noise
level is part of the scene, so it is held fixed and only the noise field is redrawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from namd.cohort.synthetic.patients import Nodule, _seq, draw_growth
from namd.cohort.synthetic.render import (
    NOISE_SD_HU,
    Scene,
    Shape,
    State,
    draw_scene,
    draw_shape,
    render,
)
from namd.config.data import DataConfig

__all__ = ["FUTURES_KEY", "STREAMS", "NoduleScene", "followup_states", "nodule_scene",
           "draw_future", "future_nodules", "future_rng", "render_futures"]

# Follow-up appearance of malignant nodules (beyond size): denser, more lobulated, longer
# spicules. Approximate; it makes progression visible, as in the paper's real follow-ups.
MALIGNANT_SOLID_DENSITY_GAIN = (5.0, 20.0)
MALIGNANT_SUBSOLID_DENSITY_GAIN = (40.0, 120.0)
RESOLVING_DENSITY_LOSS = 150.0  # HU lost per unit of diameter shrinkage (fading inflammation)

# Stream keys under (seed, stream, patient): 0 patient, 1 nodules, 2 scanner, 3 scene and
# renders of the cohort's crops; FUTURES_KEY the known futures (never drawn by the cohort).
FUTURES_KEY = 4
STREAMS = ("one-year course (growth or benign course, solid-core development), density/"
           "lobulation/spicule gain, follow-up misregistration and noise; patient, nodule, label, "
           "scene and shape held fixed")


@dataclass
class NoduleScene:
    """What the cohort drew for one nodule before its renders: the anatomy, the nodule's shape,
    its baseline and one-year states, and the generator positioned at the baseline render."""

    scene: Scene
    shape: Shape
    base: State
    follow: State
    rng: np.random.Generator


def followup_states(nodule: Nodule, rng: np.random.Generator) -> tuple[State, State]:
    """The nodule's baseline and one-year state (size, type, density, shape); one draw (the
    density gain) whatever the branch, so a stream stays aligned."""
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


def nodule_scene(nodule: Nodule, seed: int, stream: int, data: DataConfig) -> NoduleScene:
    """The scene and shape of a nodule's crops, drawn from the patient's and nodule's own
    streams exactly as the cohort draws them (the gain, the scene, then the shape)."""
    patient = nodule.patient
    noise_sd = float(_seq(seed, stream, patient.index, 2).uniform(*NOISE_SD_HU))  # the scanner
    rng = _seq(seed, stream, patient.index, 3, nodule.number)
    crop, sp = data.crop_size, data.pixel_spacing_mm
    base, follow = followup_states(nodule, rng)
    reach = 1.0 + (0.7 * 1.5 if nodule.margin == 1 else 0.1)  # spicules reach beyond the body
    clear = max(base.long_mm, follow.long_mm) / 2 * reach
    scene = draw_scene(rng, crop, sp, patient.emphysema, clear, noise_sd)
    shape = draw_shape(rng, crop, sp, nodule.margin, nodule.label == 1, nodule.attenuation != 1)
    return NoduleScene(scene, shape, base, follow, rng)


def future_rng(nodule: Nodule, seed: int, stream: int, m: int) -> np.random.Generator:
    """The stream of future m of a nodule: new, so it shares no draw with the cohort's."""
    return _seq(seed, stream, nodule.patient.index, FUTURES_KEY, nodule.number, m)


def draw_future(nodule: Nodule, rng: np.random.Generator) -> Nodule:
    """A copy of the nodule whose one-year course (growth, core development) is drawn anew from
    `rng`; its baseline, label and patient are the nodule's own. Its recorded EHRs are the
    cohort's (futures are images only)."""
    future = dataclasses.replace(nodule)
    draw_growth(rng, future)
    return future


def future_nodules(nodule: Nodule, seed: int, stream: int, count: int) -> list[Nodule]:
    """The nodules of futures 0 .. count-1 (their true growth is `.growth`): what
    `render_futures` renders, without the images."""
    return [draw_future(nodule, future_rng(nodule, seed, stream, m)) for m in range(count)]


def render_futures(nodule: Nodule, seed: int, stream: int, data: DataConfig,
                   count: int) -> np.ndarray:
    """HU crops (count, crop, crop) float32 of futures 0 .. count-1 of a nodule: the cohort's
    scene and shape (drawn once), each future's course, gain and render from its own stream."""
    drawn = nodule_scene(nodule, seed, stream, data)
    crop, sp = data.crop_size, data.pixel_spacing_mm
    out = np.empty((count, crop, crop), np.float32)
    for m in range(count):
        rng = future_rng(nodule, seed, stream, m)
        _, follow = followup_states(draw_future(nodule, rng), rng)
        out[m] = render(drawn.scene, drawn.shape, follow, rng, crop, sp)
    return out
