"""Synthetic patients and nodules: NLST-like EHR, labels drawn from the Brock model, and
one-year growth from a volume doubling time.

Every draw comes from a generator seeded by (seed, stream, patient, ...), so a patient is
the same whatever the size of the cohort. Prevalences are approximate starting points
(see docs/reference-facts.md, sections 1-5, and the comments); the true values of a
nodule drive its label and its images, the *recorded* EHR adds missing values on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from namd.cohort.brock import brock_logit
from namd.cohort.ehr import EHR, FAMILY, NODULE_FIELDS, PATIENT_FIELDS

# --- patients (approximate NLST figures; Aberle et al., NEJM 2011, Table 1) --------------
AGE_BANDS = ((55, 59, 0.428), (60, 64, 0.306), (65, 69, 0.178), (70, 74, 0.088))
P_FEMALE = 0.41
P_EMPHYSEMA = 0.08  # self-reported diagnosed emphysema (diagemph), approximate
# First-degree family history of lung cancer, per relative (approximate; about 22% any).
P_FAMILY = {"famfather": 0.08, "fammother": 0.05, "fambrother": 0.07, "famsister": 0.04,
            "famchild": 0.01}
# Nodules per patient: the paper's train/val set has 1,121 pairs from 776 subjects (1.44).
NODULE_COUNT_P = (0.68, 0.22, 0.10)
# Whole fam* block missing (sites without the questionnaire, public IDC tables): a multiple
# of the per-field missing rate.
FAMILY_BLOCK_MISSING_FACTOR = 2.0

# --- nodules (approximate shares among NLST non-calcified nodules >= 4 mm) ----------------
ATTENUATION_P = {1: 0.72, 2: 0.18, 3: 0.10}  # solid, ground glass, part-solid
LOBE_P = {1: 0.28, 2: 0.08, 3: 0.20, 4: 0.21, 5: 0.05, 6: 0.18}  # upper lobes most frequent
MARGIN_P = {  # per attenuation: spiculated (1), smooth (2), poorly defined (3)
    1: {1: 0.15, 2: 0.55, 3: 0.30},
    2: {1: 0.05, 2: 0.45, 3: 0.50},
    3: {1: 0.20, 2: 0.35, 3: 0.45},
}
DIAMETER_MIN_MM, DIAMETER_MAX_MM = 4.0, 30.0  # NLST code 51 starts at 4 mm
DIAMETER_MEDIAN_EXCESS_MM = {1: 3.5, 2: 5.0, 3: 6.0}  # subsolid nodules tend to be larger
DIAMETER_LOG_SD = 0.75
ASPECT_RANGE = (0.65, 1.0)  # perpendicular / longest diameter
MEASUREMENT_SD_MM = 0.4  # reader variability before rounding to whole millimetres
PART_SOLID_CORE = (0.3, 0.6)  # solid-core diameter / whole diameter

# --- growth (reference, section 3): diameter factor 2^(t / (3 VDT)) -----------------------
FOLLOWUP_DAYS = 365.0
VDT_MALIGNANT = {1: (220.0, 0.4), 2: (700.0, 0.35), 3: (450.0, 0.35)}  # median days, log-sd
VDT_MIN_DAYS = 60.0  # the most aggressive cancers
SOLID_CORE_VDT_RATIO = 0.5  # the solid component of a subsolid cancer grows first
P_GGN_DEVELOPS_CORE = 0.35  # malignant ground glass developing a solid core (becomes part-solid)
PATIENT_VDT_LOG_SD = 0.2  # patient-level noise shared by all nodules of a patient
# Benign: stable (no measurable change), slow growth (VDT 600-1500 d) or shrinking.
BENIGN_MODES = {"stable": 0.70, "slow": 0.15, "shrink": 0.15}
BENIGN_STABLE_LOG_SD = 0.02
BENIGN_SLOW_VDT = (600.0, 1500.0)
BENIGN_SHRINK = (0.5, 0.9)

UNPAIRED_LABEL_MISSING = 0.3  # public single-time-point sets lack a diagnosis for many crops


def _seq(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one (seed, keys...) stream, independent of every other stream."""
    return np.random.default_rng([int(seed) % 2**63, *keys])


def _from_uniform(probs: dict, u: float):
    """The key of `probs` that a uniform number u in [0, 1) selects (inverse CDF)."""
    target = u * sum(probs.values())
    acc = 0.0
    for key, p in probs.items():
        acc += p
        if target < acc:
            return key
    return key


def _pick(rng: np.random.Generator, probs: dict):
    """Draw a key of `probs` with its probability (one uniform draw)."""
    return _from_uniform(probs, rng.random())


@dataclass
class Patient:
    """A synthetic patient: true attributes, recorded (possibly missing) EHR fields."""

    patient_id: str
    index: int
    age: int
    female: bool
    emphysema: bool
    family: dict[str, int]
    nodule_count: int
    vdt_factor: float
    recorded: dict[str, float | int | None] = field(default_factory=dict)


@dataclass
class Nodule:
    """A synthetic nodule: true baseline and follow-up state, label, and recorded EHRs."""

    patient: Patient
    number: int
    attenuation: int
    lobe: int
    long_mm: float
    perp_mm: float
    margin: int
    core_fraction: float  # solid-core diameter / whole diameter (1 solid, 0 ground glass)
    p_malignant: float = math.nan
    label: int = 0
    vdt_days: float | None = None
    growth: float = 1.0
    followup_attenuation: int = 1
    followup_core_fraction: float = 1.0
    ehr_baseline: EHR = field(default_factory=EHR)
    ehr_followup: EHR = field(default_factory=EHR)
    label_recorded: int | None = None

    @property
    def nodule_id(self) -> str:
        return f"N{self.number}"

    @property
    def followup_long_mm(self) -> float:
        return self.long_mm * self.growth

    @property
    def followup_perp_mm(self) -> float:
        return self.perp_mm * self.growth


def draw_patient(rng: np.random.Generator, patient_id: str, index: int) -> Patient:
    """True patient attributes (age 55-74, sex, emphysema, family history, nodule count)."""
    band = AGE_BANDS[_pick(rng, {i: b[2] for i, b in enumerate(AGE_BANDS)})]
    age = int(rng.integers(band[0], band[1] + 1))
    family = {f: int(rng.random() < P_FAMILY[f]) for f in FAMILY}
    return Patient(patient_id=patient_id, index=index, age=age, female=bool(rng.random() < P_FEMALE),
                   emphysema=bool(rng.random() < P_EMPHYSEMA), family=family,
                   nodule_count=1 + _pick(rng, dict(enumerate(NODULE_COUNT_P))),
                   vdt_factor=float(np.exp(rng.normal(0.0, PATIENT_VDT_LOG_SD))))


def record_patient(rng: np.random.Generator, patient: Patient, missing_rate: float,
                   keep_patient_fields: bool = True) -> None:
    """Fill `patient.recorded` with the patient's EHR fields, some missing (None)."""
    true = {"age": float(patient.age), "gender": 2 if patient.female else 1,
            "diagemph": int(patient.emphysema), **patient.family}
    drop_family = rng.random() < min(1.0, missing_rate * FAMILY_BLOCK_MISSING_FACTOR)
    out: dict[str, float | int | None] = {}
    for name in PATIENT_FIELDS:  # one draw per field, always, so streams stay aligned
        lost = rng.random() < missing_rate
        gone = lost or not keep_patient_fields or (drop_family and name in FAMILY)
        out[name] = None if gone else true[name]
    patient.recorded = out


def _draw_diameter(rng: np.random.Generator, attenuation: int) -> float:
    """Longest diameter in mm: 4 mm plus a log-normal excess, redrawn above 30 mm."""
    median = DIAMETER_MEDIAN_EXCESS_MM[attenuation]
    for _ in range(100):
        d = DIAMETER_MIN_MM + median * float(np.exp(rng.normal(0.0, DIAMETER_LOG_SD)))
        if d <= DIAMETER_MAX_MM:
            return d
    return DIAMETER_MAX_MM


def draw_nodule(rng: np.random.Generator, patient: Patient, number: int) -> Nodule:
    """True baseline attributes of one nodule (type, lobe, diameters, margin)."""
    att = _pick(rng, ATTENUATION_P)
    lobe = _pick(rng, LOBE_P)
    long = _draw_diameter(rng, att)
    perp = long * float(rng.uniform(*ASPECT_RANGE))
    margin = _pick(rng, MARGIN_P[att])
    core = float(rng.uniform(*PART_SOLID_CORE)) if att == 3 else (1.0 if att == 1 else 0.0)
    return Nodule(patient=patient, number=number, attenuation=att, lobe=lobe, long_mm=long,
                  perp_mm=perp, margin=margin, core_fraction=core)


def true_ehr(nodule: Nodule) -> EHR:
    """The complete (nothing missing) baseline EHR of a nodule: what the label is drawn from."""
    p = nodule.patient
    return EHR(SCT_PRE_ATT=nodule.attenuation, SCT_EPI_LOC=nodule.lobe,
               SCT_LONG_DIA=nodule.long_mm, SCT_PERP_DIA=nodule.perp_mm,
               SCT_MARGINS=nodule.margin, age=float(p.age), diagemph=int(p.emphysema),
               gender=2 if p.female else 1, **p.family)


@lru_cache(maxsize=16)
def intercept_shift(malignant_share: float, n: int = 6000, seed: int = 20130905) -> float:
    """The constant added to the Brock logit so that the expected malignant share of the
    synthetic population equals `malignant_share`.

    Brock was fitted on first-screen nodules, where cancer is rare (a few percent); the
    NAMD cohort was selected for follow-up and is about 12% malignant (paper, 4.1.1). So we
    draw a fixed reference population (its own seed, independent of any cohort), and solve
    mean(sigmoid(logit + shift)) = share by bisection. It depends only on the share.
    """
    rng = np.random.default_rng(seed)
    logits = []
    while len(logits) < n:
        patient = draw_patient(rng, "calibration", len(logits))
        for j in range(patient.nodule_count):
            nod = draw_nodule(rng, patient, j + 1)
            logits.append(brock_logit(true_ehr(nod), nodule_count=patient.nodule_count))
    arr = np.asarray(logits[:n])
    lo, hi = -20.0, 20.0
    for _ in range(80):
        mid = (lo + hi) / 2
        share = float(np.mean(1.0 / (1.0 + np.exp(-(arr + mid)))))
        lo, hi = (mid, hi) if share < malignant_share else (lo, mid)
    return (lo + hi) / 2


def draw_label(rng: np.random.Generator, nodule: Nodule, malignant_share: float) -> None:
    """Malignancy ~ Bernoulli(sigmoid(Brock logit of the true EHR + calibrated shift))."""
    logit = brock_logit(true_ehr(nodule), nodule_count=nodule.patient.nodule_count)
    nodule.p_malignant = 1.0 / (1.0 + math.exp(-(logit + intercept_shift(malignant_share))))
    nodule.label = int(rng.random() < nodule.p_malignant)


def draw_growth(rng: np.random.Generator, nodule: Nodule) -> None:
    """One-year change: malignant nodules grow by 2^(t / (3 VDT)) with a VDT by type (solid
    fast, subsolid slow, solid component first); benign ones are stable, slow or shrink."""
    u = rng.random(4)  # fixed number of draws whatever the branch
    z = rng.normal(size=2)
    nodule.followup_attenuation = nodule.attenuation
    nodule.followup_core_fraction = nodule.core_fraction
    if nodule.label == 1:
        median, sd = VDT_MALIGNANT[nodule.attenuation]
        vdt = max(VDT_MIN_DAYS, median * math.exp(sd * z[0]) * nodule.patient.vdt_factor)
        nodule.vdt_days = vdt
        nodule.growth = 2.0 ** (FOLLOWUP_DAYS / (3.0 * vdt))
        core_growth = 2.0 ** (FOLLOWUP_DAYS / (3.0 * vdt * SOLID_CORE_VDT_RATIO))
        if nodule.attenuation == 3:
            nodule.followup_core_fraction = min(0.9, nodule.core_fraction * core_growth / nodule.growth)
        elif nodule.attenuation == 2 and u[0] < P_GGN_DEVELOPS_CORE:
            nodule.followup_attenuation = 3
            nodule.followup_core_fraction = 0.2 + 0.2 * float(u[1])
        return
    mode = _from_uniform(BENIGN_MODES, float(u[2]))
    if mode == "stable":
        nodule.growth = math.exp(BENIGN_STABLE_LOG_SD * z[1])
    elif mode == "slow":
        vdt = BENIGN_SLOW_VDT[0] + (BENIGN_SLOW_VDT[1] - BENIGN_SLOW_VDT[0]) * float(u[3])
        nodule.vdt_days = vdt
        nodule.growth = 2.0 ** (FOLLOWUP_DAYS / (3.0 * vdt))
    else:
        nodule.growth = BENIGN_SHRINK[0] + (BENIGN_SHRINK[1] - BENIGN_SHRINK[0]) * float(u[3])


def _measure(rng: np.random.Generator, long: float, perp: float, floor: float) -> tuple[float, float]:
    """Recorded diameters: reader noise, whole millimetres, perpendicular <= longest."""
    m_long = max(floor, float(np.rint(long + rng.normal(0.0, MEASUREMENT_SD_MM))))
    m_perp = max(1.0, float(np.rint(perp + rng.normal(0.0, MEASUREMENT_SD_MM))))
    return m_long, min(m_perp, m_long)


def record_nodule(rng: np.random.Generator, nodule: Nodule, missing_rate: float) -> None:
    """Recorded baseline and follow-up EHRs: same patient fields, the follow-up with its
    own (grown) diameters and attenuation; nodule fields missing independently."""
    patient = nodule.patient.recorded
    visits = (
        (nodule.attenuation, nodule.long_mm, nodule.perp_mm, DIAMETER_MIN_MM),
        (nodule.followup_attenuation, nodule.followup_long_mm, nodule.followup_perp_mm, 1.0),
    )
    ehrs = []
    for att, long, perp, floor in visits:
        m_long, m_perp = _measure(rng, long, perp, floor)
        values = {"SCT_PRE_ATT": att, "SCT_EPI_LOC": nodule.lobe, "SCT_LONG_DIA": m_long,
                  "SCT_PERP_DIA": m_perp, "SCT_MARGINS": nodule.margin}
        lost = rng.random(len(NODULE_FIELDS)) < missing_rate
        values = {k: None if gone else v for (k, v), gone in zip(values.items(), lost, strict=True)}
        ehrs.append(EHR(**values, **patient))
    nodule.ehr_baseline, nodule.ehr_followup = ehrs


def synth_patient(seed: int, stream: int, index: int, prefix: str, malignant_share: float,
                  missing_rate: float, paired: bool = True) -> list[Nodule]:
    """One patient with all its nodules (labels, growth, recorded EHR), deterministic in
    (seed, stream, index) alone."""
    rng = _seq(seed, stream, index, 0)
    patient = draw_patient(rng, f"{prefix}{index:06d}", index)
    record_patient(rng, patient, missing_rate, keep_patient_fields=paired)
    nodules = []
    for j in range(patient.nodule_count):
        nrng = _seq(seed, stream, index, 1, j)
        nodule = draw_nodule(nrng, patient, j + 1)
        draw_label(nrng, nodule, malignant_share)
        draw_growth(nrng, nodule)
        record_nodule(nrng, nodule, missing_rate)
        hide = not paired and nrng.random() < UNPAIRED_LABEL_MISSING
        nodule.label_recorded = None if hide else nodule.label
        nodules.append(nodule)
    return nodules
