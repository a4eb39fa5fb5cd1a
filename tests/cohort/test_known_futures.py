"""Known futures of the synthetic cohort's test pairs: the drawing (namd.cohort.synthetic.futures)
and the on-disk format (namd.cohort.known_futures), its "not available" cases and its damage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from namd.cohort.ehr import EHR
from namd.cohort.known_futures import (
    FUTURES_CSV,
    FUTURES_NPY,
    KnownFutures,
    KnownFuturesWriter,
    read_known_futures,
)
from namd.cohort.store import CohortError, CohortFileError, CohortWriter
from namd.cohort.synthetic import GENERATOR, PAIRED, generate_cohort, iter_nodules
from namd.cohort.synthetic.futures import future_nodules, render_futures
from namd.config import DataConfig, SynthConfig

DATA = DataConfig()
M, H = 6, 2
# More malignant nodules than the default, so a small cohort has several among its test pairs.
CFG = SynthConfig(pairs=60, unpaired=0, seed=5, malignant_share=0.3, known_futures=M,
                  held_out_futures=H, split_fractions=(0.4, 0.1, 0.5))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The cohort folder, its futures as read, and its test nodules by pair id."""
    out = generate_cohort(tmp_path_factory.mktemp("kf") / "cohort", CFG, DATA)
    futures = read_known_futures(out)
    assert isinstance(futures, KnownFutures), futures
    nodules = {f"{n.patient.patient_id}-{n.nodule_id}": n for n in iter_nodules(CFG, PAIRED, CFG.pairs)}
    return out, futures, nodules


def _copy(made, tmp_path):
    """A copy of the cohort to damage."""
    return shutil.copytree(made[0], tmp_path / "cohort")


def _centre_area(image: np.ndarray, threshold: float) -> int:
    """Pixels of the connected component above `threshold` at the crop's centre."""
    lab, _ = ndimage.label(image > threshold)
    c = image.shape[-1] // 2
    k = lab[c - 1:c + 1, c - 1:c + 1].max()
    return int((lab == k).sum()) if k else 0


# ------------------------------------------------------------------ what is written
def test_one_row_per_labelled_test_pair_in_crop_order(made):
    from namd.cohort.store import Cohort

    out, futures, _ = made
    test = Cohort(out).pairs("test")
    assert len(test) > 10 and futures.pair_ids == test.sort_values("followup_index").pair_id.tolist()
    assert futures.images.shape == (len(test), M + H, DATA.crop_size, DATA.crop_size)
    assert futures.images.dtype == np.float32 and (futures.reference, futures.held_out) == (M, H)
    meta = json.loads((out / "cohort.json").read_text())["known_futures"]
    assert meta["reference"] == M and meta["held_out"] == H and meta["generator"] == GENERATOR
    assert "misregistration" in meta["streams"]
    table = (out / FUTURES_CSV).read_text().splitlines()
    assert table[0] == "pair_id,followup_index"
    assert [int(r.split(",")[1]) for r in table[1:]] == test.sort_values("followup_index").followup_index.tolist()
    assert np.load(out / FUTURES_NPY, allow_pickle=False).dtype == np.int16


def test_int16_holds_the_renders_exactly(made):
    out, futures, nodules = made
    pid = futures.pair_ids[0]
    rendered = render_futures(nodules[pid], CFG.seed, PAIRED, DATA, M + H)
    assert rendered.dtype == np.float32 and rendered.min() >= -1024 and rendered.max() <= 3071
    np.testing.assert_array_equal(futures.of([pid])[0], rendered)  # bit for bit, after int16


def test_writer_refuses_what_int16_cannot_hold(tmp_path):
    writer = KnownFuturesWriter(tmp_path, 1, 2, 4)
    with pytest.raises(CohortError, match="whole HU"):
        writer.add("p", 1, np.full((2, 4, 4), -600.5, np.float32))
    with pytest.raises(CohortError, match="whole HU"):
        writer.add("p", 1, np.full((2, 4, 4), 40000.0, np.float32))
    with pytest.raises(CohortError, match="shape"):
        writer.add("p", 1, np.zeros((3, 4, 4), np.float32))
    with pytest.raises(CohortError, match="0 pairs written, 1 announced"):
        writer.close()


def test_same_seed_same_bytes(made, tmp_path):
    again = generate_cohort(tmp_path / "again", CFG, DATA)
    for name in (FUTURES_NPY, FUTURES_CSV, "cohort.json"):
        assert (again / name).read_bytes() == (made[0] / name).read_bytes(), name


# ------------------------------------------------------------------ what is drawn
def test_futures_differ_from_each_other_and_from_the_followup(made):
    from namd.cohort.store import Cohort

    out, futures, nodules = made
    cohort = Cohort(out)
    rows = cohort.pairs("test").set_index("pair_id").loc[futures.pair_ids]
    follow = cohort.images(rows.followup_index)
    for i, pid in enumerate(futures.pair_ids):
        imgs = futures.images[i]
        assert not any(np.array_equal(imgs[a], imgs[b]) for a in range(M + H) for b in range(a))
        assert not any(np.array_equal(img, follow[i]) for img in imgs)
        growth = [f.growth for f in future_nodules(nodules[pid], CFG.seed, PAIRED, M + H)]
        assert len(set(growth)) == M + H and nodules[pid].growth not in growth


def test_stable_benign_futures_look_like_the_followup_up_to_noise(made):
    """A benign nodule whose cohort follow-up and future are both stable: same anatomy, same
    nodule; only misregistration and noise differ. Another pair's follow-up does not match."""
    from namd.cohort.store import Cohort

    out, futures, nodules = made
    cohort = Cohort(out)
    follow_of = dict(zip(futures.pair_ids, cohort.images(
        cohort.pairs("test").set_index("pair_id").loc[futures.pair_ids].followup_index), strict=True))
    same, other, checked = [], [], 0
    for i, pid in enumerate(futures.pair_ids):
        nod = nodules[pid]
        if nod.label or abs(nod.growth - 1) > 0.05:
            continue
        follow = ndimage.gaussian_filter(follow_of[pid], 1.5)
        stranger = ndimage.gaussian_filter(follow_of[futures.pair_ids[i - 1]], 1.5)
        for m, fut in enumerate(future_nodules(nod, CFG.seed, PAIRED, M + H)):
            if abs(fut.growth - 1) > 0.05:
                continue
            img = ndimage.gaussian_filter(futures.images[i, m], 1.5)
            same.append(np.corrcoef(img.ravel(), follow.ravel())[0, 1])
            other.append(np.corrcoef(img.ravel(), stranger.ravel())[0, 1])
            checked += 1
    assert checked > 10
    assert np.median(same) > 0.8 and np.median(other) < 0.5, (np.median(same), np.median(other))


def test_malignant_futures_vary_in_size_more_than_stable_benign_ones(made):
    """True growth of the futures spreads for a cancer, hardly for a stable benign nodule, and
    the rendered nodule's size follows it."""
    _, futures, nodules = made
    spread = {0: [], 1: []}
    area_vs_growth = []
    for i, pid in enumerate(futures.pair_ids):
        nod = nodules[pid]
        growth = np.array([f.growth for f in future_nodules(nod, CFG.seed, PAIRED, M + H)])
        if nod.label == 1:
            spread[1].append(growth.std() / growth.mean())
            if nod.attenuation == 1:
                areas = [_centre_area(img, -400.0) for img in futures.images[i]]
                area_vs_growth.append(np.corrcoef(areas, growth)[0, 1])
        else:
            stable = growth[np.abs(growth - 1) < 0.05]  # the stable course, not slow or shrinking
            if len(stable) > 2:
                spread[0].append(stable.std() / stable.mean())
    assert len(spread[1]) >= 3 and len(spread[0]) >= 3
    assert np.median(spread[1]) > 3 * np.median(spread[0]), spread
    assert area_vs_growth and np.median(area_vs_growth) > 0.6, area_vs_growth


# ------------------------------------------------------------------ reading
def test_of_returns_the_asked_order_and_names_a_missing_pair(made):
    _, futures, _ = made
    ids = futures.pair_ids[::-1][:3]
    np.testing.assert_array_equal(futures.of(ids), futures.images[[len(futures.pair_ids) - 1 - k for k in range(3)]])
    with pytest.raises(CohortFileError, match="P999999-N1") as info:
        futures.of([ids[0], "P999999-N1"])
    assert FUTURES_CSV in str(info.value) and "\n" not in str(info.value)


def test_not_available_cases(made, tmp_path):
    real = CohortWriter(tmp_path / "real", DATA.crop_size, DATA.pixel_spacing_mm, source="nlst")
    real.add(np.zeros((DATA.crop_size,) * 2, np.float32), patient_id="a", nodule_id="1",
             kind="unpaired", split="test", label=None, ehr=EHR())
    reasons = [read_known_futures(real.close())]
    off = SynthConfig(pairs=4, unpaired=0, seed=5, known_futures=0)
    reasons.append(read_known_futures(generate_cohort(tmp_path / "off", off, DATA)))
    copy = _copy(made, tmp_path)
    (copy / FUTURES_NPY).unlink()
    reasons.append(read_known_futures(copy))
    meta = json.loads((made[0] / "cohort.json").read_text())
    (copy / "cohort.json").write_text(json.dumps({**meta, "generator": "namd-synth-0"}))
    reasons.append(read_known_futures(copy))
    for reason in reasons:
        assert isinstance(reason, str) and reason.startswith("not available: ") and "\n" not in reason
    assert "nlst" in reasons[0] and "known_futures 0" in reasons[1]
    assert FUTURES_NPY in reasons[2] and "namd-synth-0" in reasons[3]
    assert isinstance(read_known_futures(made[0]), KnownFutures)


def _npy(path, array):
    np.save(path, array)


@pytest.mark.parametrize("damage,named,words", [
    ("float32", FUTURES_NPY, "int16"),
    ("one_future_less", FUTURES_NPY, "shape"),
    ("garbage", FUTURES_NPY, "not a readable"),
    ("counts", FUTURES_NPY, "cohort.json"),
    ("no_column", FUTURES_CSV, "followup_index"),
    ("short_csv", FUTURES_CSV, "rows"),
    ("repeated_id", FUTURES_CSV, "repeated"),
    ("bad_meta", "cohort.json", "reference"),
])
def test_damage_raises_one_line_naming_the_file(made, tmp_path, damage, named, words):
    copy = _copy(made, tmp_path)
    array = np.load(copy / FUTURES_NPY)
    lines = (copy / FUTURES_CSV).read_text().splitlines()
    meta = json.loads((copy / "cohort.json").read_text())
    if damage == "float32":
        _npy(copy / FUTURES_NPY, array.astype(np.float32))
    elif damage == "one_future_less":
        _npy(copy / FUTURES_NPY, array[:, 1:])
    elif damage == "garbage":
        (copy / FUTURES_NPY).write_bytes(b"\x00garbage" * 100)
    elif damage == "counts":
        meta["known_futures"]["held_out"] += 1
        (copy / "cohort.json").write_text(json.dumps(meta))
    elif damage == "no_column":
        (copy / FUTURES_CSV).write_text("\n".join(r.split(",")[0] for r in lines) + "\n")
    elif damage == "short_csv":
        (copy / FUTURES_CSV).write_text("\n".join(lines[:-1]) + "\n")
    elif damage == "repeated_id":
        (copy / FUTURES_CSV).write_text("\n".join([*lines[:-1], lines[1]]) + "\n")
    else:
        meta["known_futures"]["reference"] = "many"
        (copy / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(CohortFileError, match=words) as info:
        read_known_futures(copy)
    message = str(info.value)
    assert str(copy / named) in message and "\n" not in message and " — " in message


def test_config_counts_are_non_negative():
    with pytest.raises(ValueError, match="known_futures"):
        SynthConfig(known_futures=-1)
    with pytest.raises(ValueError, match="held_out_futures"):
        SynthConfig(held_out_futures=-1)
    assert (SynthConfig().known_futures, SynthConfig().held_out_futures) == (20, 8)
