"""Growth evidence: the size of discs, the label gap of generators that do and do
not grow malignant nodules, the growth block of `namd evaluate` and its report section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from namd.cohort.ehr import EHR
from namd.cohort.known_futures import KnownFuturesWriter, futures_meta
from namd.cohort.store import Cohort, CohortWriter
from namd.config import EvalConfig, load_config, save_config
from namd.evaluation import evaluate, growth
from namd.evaluation.report.build import build_section
from namd.evaluation.report.growth import section_growth
from namd.evaluation.report.inputs import Context
from namd.evaluation.schema import SCHEMA_VERSION
from namd.inference.sample_stage import INDEX_COLUMNS
from namd.models.evaluator import build_evaluator
from namd.models.vae import build_vae, save_trained_vae
from namd.run.layout import RunDir
from namd.run.provenance import atomic_write_json

SIZE, SPACING, K = 32, 0.7, 4
EV = EvalConfig(bootstrap=300, seed=5)
TITLE = "Growth: does the generator predict change?"


def disc(radius_px: float, rng: np.random.Generator | None = None, size: int = SIZE) -> np.ndarray:
    """A solid disc (0 HU) of the given radius at the crop centre on lung (-850 HU), in HU."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    img = np.where(np.hypot(yy, xx) <= radius_px, 0.0, -850.0)
    if rng is not None:
        img = img + rng.normal(scale=30, size=img.shape)  # never crosses the -650 HU threshold
    return img.astype(np.float32)


def nodules(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline radii (px) and labels (every fourth malignant)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(3.0, 6.0, n), (np.arange(n) % 4 == 0).astype(int)


def crops(radii: np.ndarray, seed: int) -> np.ndarray:
    """Noisy discs (N, H, W) of the given radii (px)."""
    rng = np.random.default_rng(seed)
    return np.stack([disc(r, rng) for r in radii])


def samples(radii: np.ndarray, growth_px: np.ndarray, seed: int) -> np.ndarray:
    """K noisy samples per nodule (N, K, H, W), each grown by its nodule's `growth_px`."""
    return np.stack([crops(np.full(K, r + g), seed + i)
                     for i, (r, g) in enumerate(zip(radii, growth_px, strict=True))])


def balanced_jitter(label: np.ndarray) -> np.ndarray:
    """Per-nodule growth of -1, 0, +1 px cycling within each label: noise without a label gap."""
    out = np.zeros(len(label))
    for value in (0, 1):
        idx = np.flatnonzero(label == value)
        out[idx] = np.resize([-1.0, 0.0, 1.0], len(idx))
    return out


@pytest.fixture(scope="module")
def block() -> dict:
    """Malignant nodules grow by 2 px, in reality and in NAMD's samples; the null-context
    generator's samples only jitter; the no-align variant did not run."""
    radii, label = nodules()
    grow = 2.0 * label
    variants = {
        "namd": growth.Variant(samples(radii, grow, 100), crops(radii, 2), samples="samples",
                               vae="vae"),
        "no_align": growth.Variant(status="not run: samples_no_align not found"),
        "null_context": growth.Variant(samples(radii, balanced_jitter(label), 200),
                                            crops(radii, 2), samples="samples_null_context", vae="vae"),
    }
    return growth.growth_block(crops(radii, 1), crops(radii + grow, 3), np.full(len(radii), SPACING),
                               label, variants, EV)


@pytest.mark.parametrize("spacing", [0.6, 1.0])
def test_size_of_discs_is_right_within_a_pixel(spacing):
    radii = np.array([2.0, 3.5, 5.0, 7.5])
    d = growth.nodule_size_mm(crops(radii, 0), np.full(len(radii), spacing))
    area = np.array([(disc(r) > -400).sum() for r in radii])  # the digital disc's pixels
    np.testing.assert_allclose(d, 2 * np.sqrt(area / np.pi) * spacing, atol=spacing)
    d2 = growth.nodule_size_mm(crops(radii, 0)[:, None].repeat(2, 1), np.full(len(radii), spacing))
    assert d2.shape == (len(radii), 2)  # (N, K, H, W) gives (N, K)
    np.testing.assert_allclose(d2[:, 0], d)


def test_a_vessel_touching_the_nodule_or_the_crop_edge_hardly_changes_the_size():
    """The reason the former size kept to a disc around the centre: a connected-component
    size jumped to the vessel. The measurer's opening cuts it (within a pixel of the size)."""
    plain, edge, vessel = disc(5.0), disc(5.0), disc(5.0)
    edge[:, :1] = 40.0  # a bright band along the crop's edge
    vessel[15:17, :] = 40.0  # a 2 px vessel through the nodule, across the crop
    d = growth.nodule_size_mm(np.stack([plain, edge, vessel]), np.full(3, SPACING))
    assert d[0] == pytest.approx(10 * SPACING, abs=SPACING)
    assert d[1] == d[0] and d[2] == pytest.approx(d[0], abs=SPACING)


def test_malignant_growth_gives_a_positive_gap_whose_interval_excludes_zero(block):
    real, namd = block["real_followup"], block["generated"]["namd"]
    for r in (real, namd):  # 2 px more radius = 4 px = 2.8 mm more diameter
        assert r["difference_mm"] == pytest.approx(4 * SPACING, abs=SPACING)
        lo, hi = r["difference_ci95"]
        assert 0 < lo <= r["difference_mm"] <= hi
        assert r["benign_mean_mm"] == pytest.approx(0.0, abs=0.2)
        assert (r["n_malignant"], r["n_benign"]) == (10, 30)
    assert namd["status"] == "ok" and namd["k"] == K
    assert namd["benign_minus_real_benign_mm"] == pytest.approx(
        namd["benign_mean_mm"] - real["benign_mean_mm"])
    assert abs(block["baseline_size"]["difference_mm"]) < 2.0  # radii drawn alike per label


def test_a_generator_without_growth_gives_an_interval_containing_zero(block):
    null = block["generated"]["null_context"]
    lo, hi = null["difference_ci95"]
    assert lo < 0 < hi and hi - lo > 0.1  # the jitter makes a real interval, not a point
    vs = null["vs_namd"]  # NAMD's gap minus this one: about NAMD's whole gap, paired interval
    assert vs["gap_difference_mm"] == pytest.approx(
        block["generated"]["namd"]["difference_mm"] - null["difference_mm"])
    assert 0 < vs["ci95"][0] <= vs["gap_difference_mm"] <= vs["ci95"][1]
    assert "vs_namd" not in block["generated"]["namd"]


def test_generated_growth_is_measured_from_the_vae_copy():
    """Samples that equal their VAE's (shrunk) copy of the baseline have not grown."""
    radii, _ = nodules(6)
    copy = crops(radii - 1.0, 4)
    grown = growth.generated_growth(np.repeat(copy[:, None], K, 1), copy, np.full(6, SPACING))
    np.testing.assert_allclose(grown, 0.0)
    with pytest.raises(ValueError, match="do not match"):
        growth.generated_growth(copy[:, None], copy[:3], np.full(6, SPACING))
    # sizes measured already are used as given
    given = growth.generated_growth(copy[:, None], copy, np.full(6, SPACING), np.full((6, 1), 9.0))
    np.testing.assert_allclose(given, 9.0 - growth.nodule_size_mm(copy, np.full(6, SPACING)))


def test_missing_variant_keeps_its_status_and_block_is_strict_json(block):
    assert block["generated"]["no_align"] == {"status": "not run: samples_no_align not found"}
    assert list(block["generated"]) == ["namd", "no_align", "null_context"]
    assert block["size"] == growth.SIZE and "threshold_hu" not in block
    assert block["bootstrap"] == {"n": 300, "level": 0.95, "seed": 5,
                                  "resampled": "nodules, within each label"}
    assert json.loads(json.dumps(block, allow_nan=False)) == block


def test_sizes_measured_already_give_the_same_block():
    """evaluate_run hands over the sizes it measured once; the block must not change."""
    radii, label = nodules(12)
    base, follow = crops(radii, 1), crops(radii + 2.0 * label, 3)
    variants = {"namd": growth.Variant(samples(radii, 2.0 * label, 7), crops(radii, 2))}
    spacing = np.full(len(radii), SPACING)
    sizes = {"baseline": growth.nodule_size_mm(base, spacing),
             "followup": growth.nodule_size_mm(follow, spacing),
             "namd": growth.nodule_size_mm(variants["namd"].crops, spacing)}
    assert (growth.growth_block(base, follow, spacing, label, variants, EV, sizes)
            == growth.growth_block(base, follow, spacing, label, variants, EV))
    shifted = {**sizes, "followup": sizes["followup"] + 1.0}  # and they are really used
    moved = growth.growth_block(base, follow, spacing, label, variants, EV, shifted)
    assert moved["real_followup"]["benign_mean_mm"] == pytest.approx(
        growth.growth_block(base, follow, spacing, label, variants, EV)["real_followup"]["benign_mean_mm"] + 1.0)


def test_a_config_saved_with_the_former_size_settings_still_loads():
    """eval.growth_threshold_hu / growth_radius_mm are retired: ignored, not an error; any
    other unknown key still is."""
    ev = EvalConfig.model_validate({"bootstrap": 50, "growth_threshold_hu": -400.0,
                                    "growth_radius_mm": 10.0})
    assert ev.bootstrap == 50 and "growth_radius_mm" not in ev.model_dump()
    with pytest.raises(ValueError, match="growth_radius"):
        EvalConfig.model_validate({"growth_radius": 10.0})


def test_the_interval_is_seeded():
    values, label = np.arange(20.0), np.arange(20) % 2
    a = growth.label_difference(values, label, 200, seed=1)
    assert a == growth.label_difference(values, label, 200, seed=1)
    assert a["difference_ci95"] != growth.label_difference(values, label, 200, seed=2)["difference_ci95"]
    with pytest.raises(ValueError, match="both labels"):
        growth.label_difference(values, np.zeros(20), 200)


# ---------------------------------------------------------------- namd evaluate, end to end

def _run(root) -> tuple[RunDir, Cohort]:
    """A run with a synthetic-like cohort (malignant follow-ups grow; 3 + 2 known futures per
    test pair), an untrained VAE and NAMD and null-context samples (the same noisy real
    follow-ups); samples_no_align is absent."""
    run, rng = RunDir(root), np.random.default_rng(0)
    config = load_config("tiny", overrides=["eval.bootstrap=50", f"data.crop_size={SIZE}"])
    root.mkdir(parents=True, exist_ok=True)
    save_config(config, root / "config.yaml")
    writer = CohortWriter(run.stage("cohort"), crop_size=SIZE, pixel_spacing_mm=SPACING,
                          source="synthetic", extra_meta={
                              "generator": "test-1", "known_futures": futures_meta(3, 2, "test-1", "all")})
    futures = []
    splits = ("train",) * 3 + ("val", "test")
    for i in range(40):
        label, radius = int(i % 4 < 2), rng.uniform(3.0, 6.0)
        ehr = EHR(SCT_LONG_DIA=2 * radius * SPACING, age=55.0 + i % 20, gender=1 + i % 2)
        for kind, r in (("baseline", radius), ("followup", radius + 2.0 * label)):
            writer.add(disc(r, rng), patient_id=f"p{i}", nodule_id="1", kind=kind,
                       split=splits[i % 5], label=label, ehr=ehr, pair_id=f"pair{i}",
                       timepoint=int(kind == "followup"))
        if splits[i % 5] == "test":
            grown = radius + 2.0 * label + rng.uniform(-0.5, 0.5, 5)
            futures.append((f"pair{i}", writer.rows[-1]["crop_index"],
                            np.rint(np.stack([disc(r, rng) for r in grown]))))
    known = KnownFuturesWriter(writer.tmp, len(futures), 5, SIZE)
    for pair_id, index, images in futures:
        known.add(pair_id, index, images)
    known.close()
    cohort = Cohort(writer.close())
    vae_cfg = config.vae.model_copy(update={"block_out_channels": (8, 8), "norm_num_groups": 4})
    save_trained_vae(build_vae(vae_cfg), run.stage("vae"), scale_factor=0.7)
    run.mark_done("vae", config, 0)
    pairs = cohort.pairs("test")
    follow = cohort.images(pairs["followup_index"])[:, None].repeat(2, 1)
    follow = (follow + rng.normal(scale=20, size=follow.shape)).astype(np.float32)  # finite PSNR
    for folder in ("samples", "samples_null_context"):
        run.stage(folder).mkdir()
        np.save(run.stage(folder) / "samples.npy", follow)
        pairs[list(INDEX_COLUMNS)].to_csv(run.stage(folder) / "index.csv", index=False)
        atomic_write_json(run.stage(folder) / "run_info.json", {"complete": True, "seed": 23})
    return run, cohort


def test_evaluate_writes_the_growth_and_known_futures_blocks(tmp_path, monkeypatch):
    run, _ = _run(tmp_path / "run")
    config = load_config(base=run.saved_config())
    untrained = build_evaluator(config.evaluator, SIZE)  # the scores do not matter here
    monkeypatch.setattr(evaluate, "load_evaluator",
                        lambda _: (untrained, tuple(config.data.window_hu), {}))
    evaluate.evaluate_run(run, config)
    metrics = json.loads((run.stage("eval") / "metrics.json").read_text())
    futures = metrics["known_futures"]
    assert futures["status"] == "ok", futures
    assert (futures["reference_futures"], futures["held_out_futures"], futures["n"]) == (3, 2, 8)
    assert list(futures["rows"]) == ["namd", "null_context", "copy_baseline", "vae_copy_baseline",
                                     "real_followup", "held_out_futures", "shuffled"]
    rows = futures["rows"]
    assert rows["real_followup"]["k"] == 1 and rows["namd"]["k"] == 2
    assert rows["namd"]["energy_image_hu"] == rows["null_context"]["energy_image_hu"]  # same samples
    assert rows["shuffled"]["energy_diameter_mm"] > rows["held_out_futures"]["energy_diameter_mm"]
    table = pd.read_csv(run.stage("eval") / "per_nodule.csv")
    assert table["namd_energy_diameter_mm"].mean() == pytest.approx(rows["namd"]["energy_diameter_mm"])
    assert "held_out_futures_energy_image_hu" in table.columns
    g = metrics["growth"]
    assert g["real_followup"]["difference_mm"] == pytest.approx(4 * SPACING, abs=SPACING)
    assert g["real_followup"]["n_malignant"] == 4 and g["bootstrap"]["n"] == 50
    gen = g["generated"]
    assert gen["no_align"]["status"].startswith("not run:")
    assert "samples_no_align" in gen["no_align"]["status"]
    for name, folder in (("namd", "samples"), ("null_context", "samples_null_context")):
        assert gen[name]["status"] == "ok" and gen[name]["k"] == 2
        assert (gen[name]["samples"], gen[name]["vae"]) == (folder, "vae")
    # the same samples through the same VAE: equal gaps, a paired interval of exactly 0
    assert gen["null_context"]["vs_namd"] == {"gap_difference_mm": 0.0, "ci95": [0.0, 0.0]}


# ---------------------------------------------------------------- the report section

def _section(tmp_path, metrics: dict):
    run = RunDir(tmp_path / "run")
    run.stage("eval").mkdir(parents=True)
    whole = {"schema_version": SCHEMA_VERSION, "rows": [], **metrics}  # only the growth block matters
    (run.stage("eval") / "metrics.json").write_text(json.dumps(whole))
    return build_section(Context(run, load_config("tiny")), "growth", TITLE, section_growth)


def test_report_section_renders_the_table_and_its_reading(tmp_path, block):
    section = _section(tmp_path, {"growth": block})
    assert section.status == "ok", section.body
    body = section.body
    assert body.count("<tr") == 5  # header, real follow-up, three variants
    namd = block["generated"]["namd"]
    lo, hi = namd["difference_ci95"]
    assert f"{namd['difference_mm']:+.2f} [{lo:+.2f}, {hi:+.2f}]" in body
    assert f"{block['real_followup']['benign_mean_mm']:+.2f}" in body
    vs = block["generated"]["null_context"]["vs_namd"]
    assert f"{vs['gap_difference_mm']:+.2f} [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}]" in body
    assert "not run: samples_no_align not found" in body
    assert "the generator predicts more growth for malignant nodules" in body
    assert "nodule segmented at the crop centre" in body


def test_report_reading_follows_the_interval_and_missing_inputs(tmp_path, block):
    flat = json.loads(json.dumps(block))
    flat["generated"]["namd"]["difference_ci95"] = [-0.3, 0.5]
    assert "no evidence" in _section(tmp_path / "a", {"growth": flat}).body
    flat["generated"]["namd"] = {"status": "not run: samples not found"}
    assert "NAMD was not measured (not run: samples not found)" in _section(
        tmp_path / "b", {"growth": flat}).body
    old = _section(tmp_path / "c", {"rows": []})  # metrics.json of an older namd evaluate
    assert old.status == "partial" and "no growth block" in old.body
    missing = build_section(Context(RunDir(tmp_path / "none"), load_config("tiny")), "growth",
                            TITLE, section_growth)
    assert missing.status == "missing" and "namd evaluate" in missing.body
