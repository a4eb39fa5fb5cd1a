"""One new patient: input checks of `namd predict`, numbers through the typed config, seeds
per patient, and what its outputs record, on a run trained for one step per stage
(`tiny_run`, shared with tests/test_deidentify.py and tests/test_model.py, is in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SIZE, TINY, disc  # tiny_run: tests/conftest.py

import namd.inference.sampler
from namd.cli.main import main
from namd.cohort.ehr import EHR, EHRError
from namd.cohort.imaging import check_crop
from namd.config import ConfigError, load_config, save_config
from namd.inference.patient import load_ehr, load_patient, predict_patient
from namd.inference.prediction import baseline_hu, crop_digest, with_sampling


@pytest.fixture
def config_only_run(tmp_path) -> Path:
    """A run folder with only its config: enough for the checks made before any model loads."""
    save_config(load_config("tiny", overrides=TINY), tmp_path / "run" / "config.yaml")
    (tmp_path / "e.json").write_text("{}")
    np.save(tmp_path / "c.npy", disc(3, np.random.default_rng(1)))
    return tmp_path


# -- inputs ----------------------------------------------------------------------------------
def test_check_crop_rejects_wrong_size_and_non_hu(tmp_path):
    assert check_crop(np.full((64, 64), -800.0), 64, "x").dtype == np.float32
    with pytest.raises(ValueError, match=r"x: crop has shape \(32, 32\)"):
        check_crop(np.zeros((32, 32)), 64, "x")
    with pytest.raises(ValueError, match="do not look like HU"):
        check_crop(np.full((64, 64), 30000.0), 64, "x")
    with pytest.raises(ValueError, match="finite"):
        check_crop(np.full((64, 64), np.nan), 64, "x")


def test_a_windowed_crop_is_not_taken_for_hu():
    config = load_config("tiny", overrides=TINY)
    grey = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE))
    for crop in (grey.astype(np.uint8), grey.astype(np.float32)):
        with pytest.raises(ValueError, match=r"crop\.png: values \d+\.\.\d+ are whole numbers within "
                                             r"0\.\.255, a windowed 8-bit image rather than HU"):
            baseline_hu(crop, config, "crop.png")
    hu = baseline_hu(grey.astype(np.uint8), config, "crop.png", units="windowed_uint8")
    lo, hi = config.data.window_hu  # the mapping training applies to a windowed_uint8 cohort
    np.testing.assert_allclose(hu, lo + grey / 255.0 * (hi - lo), rtol=1e-6)
    assert hu.dtype == np.float32
    with pytest.raises(ValueError, match="windowed_uint8 crop holds grey values 0..255, got -800"):
        baseline_hu(np.full((SIZE, SIZE), -800.0), config, "c", units="windowed_uint8")
    real = disc(3, np.random.default_rng(0))  # HU with lung in it passes, as do whole-number HU
    assert np.array_equal(baseline_hu(np.round(real), config, "c"), np.round(real))


def test_load_ehr_validates_and_names_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"SCT_LONG_DIA": 12.0, "gender": 1, "famfather": None}))
    ehr = load_ehr(good)
    assert ehr.SCT_LONG_DIA == 12.0 and ehr.famfather is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"SCT_MARGINS": 5}))
    with pytest.raises(EHRError, match="bad.json.*SCT_MARGINS"):
        load_ehr(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_ehr(broken)


def test_patient_file_typos_are_errors_and_the_id_is_read(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"SCT_LONG_DAI": 12.0, "gender": 1}))
    with pytest.raises(EHRError, match=r"p\.json: unknown key 'SCT_LONG_DAI' \(did you mean SCT_LONG_DIA\?\)"):
        load_patient(path)
    path.write_text(json.dumps({"Sex": 2}))
    with pytest.raises(EHRError, match="unknown key 'Sex' .did you mean gender"):
        load_patient(path)
    path.write_text(json.dumps({"patient_id": "P7", "nodule_id": 2, "SCT_LONG_DIA": 9.0}))
    ehr, ident = load_patient(path)
    assert ident == "P7/2" and ehr.SCT_LONG_DIA == 9.0


# -- numbers through the typed config --------------------------------------------------------
def test_k_and_steps_are_validated_by_the_config():
    config = load_config("tiny", overrides=TINY)
    assert with_sampling(config) is config
    used = with_sampling(config, k=5, steps=3)
    assert (used.sampling.k, used.sampling.steps) == (5, 3) and config.sampling.k == 2
    with pytest.raises(ConfigError, match=r"config field sampling\.k: .*greater than or equal to 1 \(got 0\)"):
        with_sampling(config, k=0)
    with pytest.raises(ConfigError, match=r"config field sampling\.steps: .*\(got -3\)"):
        with_sampling(config, steps=-3)


@pytest.mark.parametrize("flag, value, field", [("--k", "0", "sampling.k"),
                                                ("--steps", "-3", "sampling.steps")])
def test_cli_refuses_bad_numbers_in_one_line(config_only_run, capsys, flag, value, field):
    d = config_only_run
    code = main(["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--crop",
                 str(d / "c.npy"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and f"config field {field}" in err[0] and f"got {value}" in err[0]


def test_api_refuses_bad_numbers_before_loading_anything(config_only_run):
    with pytest.raises(ConfigError, match="sampling.k"):
        predict_patient(config_only_run / "run", disc(3, np.random.default_rng(0)), EHR(), k=0)


def test_cli_reports_a_missing_run_in_one_line(tmp_path, capsys):
    (tmp_path / "e.json").write_text("{}")
    np.save(tmp_path / "c.npy", np.zeros((64, 64)))
    code = main(["predict", "--run", str(tmp_path / "nope"), "--ehr", str(tmp_path / "e.json"),
                 "--crop", str(tmp_path / "c.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "config.yaml not found" in err[0]


# -- on a trained run ------------------------------------------------------------------------
def test_outputs_record_the_values_used_and_no_path(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(3)
    crop = tmp_path / "secret-patient-folder" / "crop.npy"
    crop.parent.mkdir()
    np.save(crop, disc(3, rng))
    (tmp_path / "ehr.json").write_text(json.dumps({"SCT_LONG_DIA": 6.0, "gender": 2, "age": 64}))
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(tiny_run.path), "--ehr", str(tmp_path / "ehr.json"),
                 "--crop", str(crop), "--k", "3", "--steps", "1", "--out", str(out)]) == 0
    result = json.loads((out / "prediction.json").read_text())
    assert result["k"] == 3 and len(result["p_followup"]) == 3 and result["steps"] == 1
    assert result["sampling"]["k"] == 3 and result["sampling"]["steps"] == 1
    assert result["seed_from"] == "crop" and result["baseline"] == {"input": "crop", "units": "HU"}
    assert result["baseline_sha256"] == crop_digest(np.load(crop))
    info = json.loads((out / "run_info.json").read_text())
    assert (info["config"]["sampling"]["k"], info["config"]["sampling"]["steps"]) == (3, 1)
    assert info["seed"] == info["config"]["sampling"]["seed"] and info["stage"] == "predict"
    assert "secret-patient-folder" not in (out / "prediction.json").read_text()
    assert np.load(out / "samples.npy").shape == (3, SIZE, SIZE)
    printed = capsys.readouterr().out
    assert "Lung cancer screening" in printed
    readout = result["readout"]  # the radiologist's readout (namd.clinical.readout)
    assert readout["k"] == 3 and readout["lung_rads"] == "v2022"
    assert readout["attenuation"]["source"].startswith("image (the record's SCT_PRE_ATT is missing")
    assert f"readout of the 3 virtual follow-ups: {readout['summary']}" in printed
    assert "Lung-RADS v2022 at baseline:" in printed and readout["notice"] in printed


def test_each_patient_has_its_own_noises(tiny_run, monkeypatch):
    """Seeds come from the id, else from the crop: never one key shared by every patient."""
    keys: list[str] = []
    seed_of = namd.inference.sampler.sample_seed
    monkeypatch.setattr(namd.inference.sampler, "sample_seed", lambda s, key, k: keys.append(key) or seed_of(s, key, k))
    rng = np.random.default_rng(5)
    a, b = disc(3, rng), disc(3, rng)

    def run(crop, key=None):
        keys.clear()
        samples = predict_patient(tiny_run, crop, EHR(SCT_LONG_DIA=6.0), k=2, key=key).samples
        return samples, set(keys)

    first, keys_a = run(a)
    again, _ = run(a)
    _, keys_b = run(b)
    assert keys_a == {f"crop-sha256:{crop_digest(a)[:32]}"} and keys_a != keys_b
    np.testing.assert_array_equal(first, again)  # reproducible
    one, keys_one = run(a, key="patient 1")
    two, _ = run(a, key="patient 2")
    assert keys_one == {"patient 1"} and np.abs(one - two).max() > 0  # same crop, other patient
