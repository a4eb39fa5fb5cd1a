"""The synthetic cohort: determinism, structure, and the clinical signal it must carry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from namd.cohort.brock import brock_logit
from namd.cohort.contact_sheet import pick_examples, write_contact_sheet
from namd.cohort.ehr import FAMILY, NODULE_FIELDS, PATIENT_FIELDS
from namd.cohort.store import Cohort, split_leaks
from namd.cohort.synthetic import PAIRED, build_synthetic_cohort, generate_cohort, iter_nodules
from namd.config import DataConfig, SynthConfig

DATA = DataConfig()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    """A few hundred pairs: enough for the signal tests, a few seconds to make (split 70/10/20,
    no known futures: tests/cohort/test_known_futures.py has its own cohorts)."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    cfg = SynthConfig(pairs=320, unpaired=60, seed=11, split_fractions=(0.7, 0.1, 0.2),
                      known_futures=0)
    return Cohort(generate_cohort(out, cfg, DATA))


@pytest.fixture(scope="module")
def pairs(cohort) -> pd.DataFrame:
    return cohort.pairs()


def _small(tmp_path, name, **kw) -> Cohort:
    cfg = SynthConfig(**{"pairs": 8, "unpaired": 3, "seed": 4, **kw})
    return Cohort(generate_cohort(tmp_path / name, cfg, DATA))


# ------------------------------------------------------------------ determinism
def test_same_seed_same_bytes(tmp_path):
    a, b = _small(tmp_path, "a"), _small(tmp_path, "b")
    files = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file())
    for rel in files:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    c = _small(tmp_path, "c", seed=5)
    assert not np.array_equal(a.images(range(4)), c.images(range(4)))


def test_patient_is_the_same_whatever_the_cohort_size(tmp_path):
    small, large = _small(tmp_path, "s", pairs=5), _small(tmp_path, "l", pairs=15)
    ps, pl = small.pairs().set_index("pair_id"), large.pairs().set_index("pair_id")
    assert set(ps.index) <= set(pl.index)
    cols = ["patient_id", "label", *NODULE_FIELDS, *PATIENT_FIELDS, "followup_SCT_LONG_DIA"]
    pd.testing.assert_frame_equal(ps[cols], pl.loc[ps.index, cols], check_dtype=False)
    for pid in ps.index:
        for col in ("baseline_index", "followup_index"):
            np.testing.assert_array_equal(small.images([ps.loc[pid, col]]), large.images([pl.loc[pid, col]]))


def test_build_synthetic_cohort_is_a_finished_run_stage(tmp_path):
    from namd.config import load_config
    from namd.run.layout import RunDir

    run = RunDir(tmp_path / "run")
    config = load_config("tiny", overrides=["synth.pairs=3", "synth.unpaired=1"])
    build_synthetic_cohort(run.stage("cohort"), config)
    assert run.is_done("cohort")
    assert (run.stage("cohort") / "contact_sheet.png").is_file()
    assert len(Cohort(run.stage("cohort")).pairs()) == 3
    assert [p.name for p in run.path.iterdir()] == ["cohort"]  # no staging leftovers


def test_known_futures_leave_the_cohort_unchanged(tmp_path):
    """Futures draw from streams of their own: with or without them, the same crops, manifest
    and cohort.json (less its known_futures entry); without them, no futures files."""
    kw = {"pairs": 12, "unpaired": 2, "split_fractions": (0.4, 0.1, 0.5)}
    off, on = _small(tmp_path, "off", known_futures=0, **kw), _small(tmp_path, "on", known_futures=20, **kw)
    assert (on.path / "known_futures.npy").is_file() and not (off.path / "known_futures.npy").exists()
    assert not (off.path / "known_futures.csv").exists() and "known_futures" not in off.meta
    assert (off.path / "manifest.csv").read_bytes() == (on.path / "manifest.csv").read_bytes()
    for chunk in sorted((off.path / "images").iterdir()):
        assert chunk.read_bytes() == (on.path / "images" / chunk.name).read_bytes(), chunk.name
    assert {k: v for k, v in on.meta.items() if k != "known_futures"} == off.meta
    assert on.meta["known_futures"]["reference"] == 20 and len(on.pairs("test")) > 0


def test_existing_directory_is_not_overwritten(tmp_path):
    _small(tmp_path, "a")
    with pytest.raises(FileExistsError):
        _small(tmp_path, "a")


# ------------------------------------------------------------------ structure
def test_counts_kinds_and_splits(cohort, pairs):
    m = cohort.manifest
    assert len(pairs) == 320 and (m.kind == "unpaired").sum() == 60
    assert split_leaks(m) == [] and cohort.summary()["split_leaks"] == []
    assert m.groupby("patient_id")["split"].nunique().max() == 1
    paired_ids = set(m.loc[m.kind != "unpaired", "patient_id"])
    assert paired_ids.isdisjoint(m.loc[m.kind == "unpaired", "patient_id"])
    assert (m.loc[m.kind == "followup", "timepoint"] == 1).all()
    shares = m[m.kind == "baseline"].groupby("patient_id")["split"].first().value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.03) and shares["test"] == pytest.approx(0.2, abs=0.03)
    assert pairs.patient_id.nunique() < len(pairs)  # some patients have several nodules
    assert cohort.meta["units"] == "HU" and cohort.meta["pixel_spacing_mm"] == DATA.pixel_spacing_mm
    unpaired = m[m.kind == "unpaired"]
    assert unpaired.label.isna().any() and unpaired.label.notna().any()


def test_ehr_values_are_nlst_like(pairs):
    assert pairs.age.dropna().between(55, 74).all()
    assert pairs.SCT_LONG_DIA.dropna().between(4, 31).all()
    both = pairs.SCT_PERP_DIA.notna() & pairs.SCT_LONG_DIA.notna()
    assert (pairs.SCT_PERP_DIA[both] <= pairs.SCT_LONG_DIA[both]).all()
    assert set(pairs.SCT_PRE_ATT.dropna()) == {1, 2, 3}
    assert set(pairs.SCT_MARGINS.dropna()) == {1, 2, 3}
    lobes = pairs.SCT_EPI_LOC.value_counts()
    assert lobes[1] + lobes[4] + lobes.get(5, 0) > lobes[3] + lobes[6]  # upper lobes more frequent
    assert (pairs.SCT_PRE_ATT == 1).mean() > 0.5
    assert 0.2 < (pairs.gender == 2).mean() < 0.6


def test_followup_ehr_is_baseline_with_new_nodule_state(cohort, pairs):
    m = cohort.manifest
    base = m[m.kind == "baseline"].set_index("pair_id")
    follow = m[m.kind == "followup"].set_index("pair_id").loc[base.index]
    pd.testing.assert_frame_equal(base[list(PATIENT_FIELDS)], follow[list(PATIENT_FIELDS)])
    both = base.SCT_EPI_LOC.notna() & follow.SCT_EPI_LOC.notna()
    assert (base.SCT_EPI_LOC[both] == follow.SCT_EPI_LOC[both]).all()
    changed = base.SCT_PRE_ATT.notna() & follow.SCT_PRE_ATT.notna() & (base.SCT_PRE_ATT != follow.SCT_PRE_ATT)
    # Only a malignant ground-glass nodule may change type: it grows a solid component.
    assert (base.SCT_PRE_ATT[changed] == 2).all() and (follow.SCT_PRE_ATT[changed] == 3).all()
    assert (base.label[changed] == 1).all()


def test_missing_values_are_realistic_and_never_zero(tmp_path, cohort):
    paired = cohort.manifest[cohort.manifest.kind != "unpaired"]
    for field in NODULE_FIELDS:
        assert 0.005 < paired[field].isna().mean() < 0.15, field
    assert 0.005 < paired.age.isna().mean() < 0.15
    fam_block = paired[list(FAMILY)].isna().all(axis=1)
    assert 0.02 < fam_block.mean() < 0.3  # whole family history unknown for some patients
    assert paired.diagemph.isin([0, 1]).sum() + paired.diagemph.isna().sum() == len(paired)
    # Unpaired crops stand in for public sets without patient data.
    assert cohort.manifest.loc[cohort.manifest.kind == "unpaired", "age"].isna().all()
    clean = _small(tmp_path, "clean", missing_rate=0.0).manifest
    assert clean.loc[clean.kind != "unpaired", list(NODULE_FIELDS + PATIENT_FIELDS)].notna().all().all()


# ------------------------------------------------------------------ clinical signal
def _population(n: int, share: float = 0.12):
    """Nodules without images (fast): the clinical part of the generator."""
    return list(iter_nodules(SynthConfig(seed=99, malignant_share=share), PAIRED, n))


@pytest.fixture(scope="module")
def population():
    return _population(3000)


def test_malignant_share_is_calibrated(population):
    assert np.mean([n.label for n in population]) == pytest.approx(0.12, abs=0.02)
    assert np.mean([n.label for n in _population(1000, 0.3)]) == pytest.approx(0.3, abs=0.05)


def test_growth_follows_label_and_type(population):
    nodules = population
    growth = pd.DataFrame({"label": [n.label for n in nodules], "type": [n.attenuation for n in nodules],
                           "g": [n.growth for n in nodules]})
    med = growth.groupby(["label", "type"])["g"].median()
    assert med[(0, 1)] == pytest.approx(1.0, abs=0.02)  # benign: stable
    assert (growth[growth.label == 0].g < 0.95).mean() > 0.05  # some benign shrink
    assert med[(1, 1)] > 1.3  # malignant solid: VDT of a few hundred days
    assert med[(1, 1)] > med[(1, 3)] > med[(1, 2)] > 1.05  # subsolid cancers grow slower


def test_malignant_nodules_grow_more_in_the_recorded_ehr(pairs):
    ratio = pairs.followup_SCT_LONG_DIA / pairs.SCT_LONG_DIA
    by_label = ratio.groupby(pairs.label).mean()
    assert by_label[1] > by_label[0] + 0.2


def test_brock_score_alone_separates_labels(cohort, pairs):
    logits = np.array([brock_logit(cohort.ehr(row)) for _, row in pairs.iterrows()])
    ok = ~np.isnan(logits)
    assert roc_auc_score(pairs.label[ok].astype(int), logits[ok]) > 0.7


def _nodule_area(image: np.ndarray, threshold: float = -400.0) -> int:
    """Pixels of the bright connected component at the centre (opened to cut off vessels)."""
    lab, _ = ndimage.label(ndimage.binary_opening(image > threshold))
    c = image.shape[-1] // 2
    k = lab[c - 2:c + 2, c - 2:c + 2].max()
    return int((lab == k).sum()) if k else 0


def _image_features(images: np.ndarray) -> np.ndarray:
    """Nodule area (central component at a solid and a ground-glass threshold) and the mean
    HU in three rings around the centre: a deliberately simple, fixed feature set."""
    n = images.shape[-1]
    r = np.hypot(*(np.mgrid[:n, :n] - (n - 1) / 2))
    feats = [np.log1p([_nodule_area(img, t) for img in images]) for t in (-400, -700)]
    feats += [images[:, (r >= lo) & (r < hi)].mean(1) for lo, hi in ((0, 3), (3, 8), (8, 16))]
    return np.stack(feats, 1)


def _cv_auroc(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression())
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return roc_auc_score(y, cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1])


def test_classifier_on_followup_beats_baseline(cohort, pairs):
    """Follow-up crops carry more of the malignancy signal than baseline crops."""
    y = pairs.label.to_numpy().astype(int)
    base = _cv_auroc(_image_features(cohort.images(pairs.baseline_index)), y)
    follow = _cv_auroc(_image_features(cohort.images(pairs.followup_index)), y)
    assert base > 0.55  # baseline images carry some signal (size, margins)
    assert follow > base + 0.05, (base, follow)


def _centre(images: np.ndarray) -> np.ndarray:
    c = images.shape[-1] // 2
    return images[:, c - 2:c + 2, c - 2:c + 2].mean((1, 2))


def test_hounsfield_ranges_per_nodule_type(cohort, pairs):
    big = pairs[pairs.SCT_LONG_DIA >= 7]
    solid = _centre(cohort.images(big[big.SCT_PRE_ATT == 1].baseline_index))
    ggn = _centre(cohort.images(big[big.SCT_PRE_ATT == 2].baseline_index))
    assert -100 < np.median(solid) < 100 and (solid > -300).mean() > 0.9
    assert -750 < np.median(ggn) < -450 and (ggn < -300).mean() > 0.9
    part = cohort.images(big[big.SCT_PRE_ATT == 3].baseline_index)
    c = part.shape[-1] // 2
    core = part[:, c - 6:c + 6, c - 6:c + 6]
    has_solid = (core > -150).reshape(len(core), -1).mean(1) > 0.02
    has_ggo = ((core > -750) & (core < -400)).reshape(len(core), -1).mean(1) > 0.05
    assert (has_solid & has_ggo).mean() > 0.8
    everything = cohort.images(range(len(cohort)))
    assert everything.min() >= -1024 and everything.max() <= 3071
    corners = everything[:, :6, :6].reshape(-1)
    assert -950 < np.median(corners) < -800  # lung parenchyma


def test_rendered_size_matches_recorded_diameter(cohort, pairs):
    solid = pairs[(pairs.SCT_PRE_ATT == 1) & (pairs.SCT_MARGINS == 2)].dropna(
        subset=["SCT_LONG_DIA", "SCT_PERP_DIA"])
    area = np.array([_nodule_area(img) for img in cohort.images(solid.baseline_index)])
    diam_mm = 2 * np.sqrt(area / np.pi) * DATA.pixel_spacing_mm
    recorded = np.sqrt(solid.SCT_LONG_DIA * solid.SCT_PERP_DIA).to_numpy()
    assert np.corrcoef(diam_mm, recorded)[0, 1] > 0.85
    assert np.median(diam_mm / recorded) == pytest.approx(1.0, abs=0.15)


def test_followup_shows_the_same_anatomy(cohort, pairs):
    """Baseline and follow-up share vessels and background; different pairs do not."""
    n = cohort.crop_size
    r = np.hypot(*(np.mgrid[:n, :n] - (n - 1) / 2))
    outer = r > n * 0.35
    sub = pairs.head(40)
    # Smoothed, so a slight misregistration does not hide the shared vessels.
    base = ndimage.gaussian_filter(cohort.images(sub.baseline_index), (0, 1.5, 1.5))
    follow = ndimage.gaussian_filter(cohort.images(sub.followup_index), (0, 1.5, 1.5))
    same = [np.corrcoef(b[outer], f[outer])[0, 1] for b, f in zip(base, follow, strict=True)]
    other = [np.corrcoef(b[outer], f[outer])[0, 1] for b, f in zip(base, np.roll(follow, 1, 0), strict=True)]
    assert np.median(same) > 0.5 and np.median(other) < 0.2
    raw_b, raw_f = cohort.images(sub.baseline_index), cohort.images(sub.followup_index)
    assert not any(np.array_equal(b, f) for b, f in zip(raw_b, raw_f, strict=True))  # fresh noise


def test_contact_sheet(tmp_path, cohort):
    examples = pick_examples(cohort)
    kinds = {(e["SCT_PRE_ATT"], e["label"]) for e in examples}
    assert {(1.0, 0), (1.0, 1), (2.0, 0), (3.0, 0)} <= kinds
    path = write_contact_sheet(cohort, tmp_path / "sheet.png", DATA.window_hu)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 500 and img.shape[1] > 500 and img.std() > 0.1
