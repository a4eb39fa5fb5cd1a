"""Inputs are what they claim (issue 27): windowed crops are recognised whatever their dtype,
complex / boolean / object crops are refused by dtype, sampler steps stay inside the schedule
(predict, sample, the API, serve), each in one line and before any model loads. The limits of
a long request (estimate, serve's bound, predict --out, two exports): tests/inference/test_limits.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SIZE, TINY, disc  # tiny_run: tests/conftest.py

from namd.cli.main import main
from namd.cohort.imaging import check_crop
from namd.config import load_config, save_config, validated_update
from namd.config.diffusion import check_sampling_steps, max_sampling_steps, steps_fit
from namd.inference.prediction import baseline_hu, windowed_units, with_sampling


@pytest.fixture
def config():
    return load_config("tiny", overrides=TINY)


@pytest.fixture
def config_only_run(tmp_path, config):
    """A run folder with only its config: enough for every check made before a model loads."""
    save_config(config, tmp_path / "run" / "config.yaml")
    (tmp_path / "e.json").write_text("{}")
    np.save(tmp_path / "c.npy", disc(3, np.random.default_rng(1)))
    return tmp_path


def _grey(seed: int = 0) -> np.ndarray:
    """A windowed image's grey values 0..255 that are not whole numbers (a JPEG read as float)."""
    return np.random.default_rng(seed).uniform(0, 255, (SIZE, SIZE)).astype(np.float32)


# -- windowed crops, whatever their dtype ---------------------------------------------------
def test_a_float_windowed_crop_is_not_taken_for_hu(config):
    grey = _grey()
    assert not np.array_equal(grey, np.round(grey)) and windowed_units(grey) == "windowed_uint8"
    with pytest.raises(ValueError, match=r"crop\.npy: values [\d.]+\.\.[\d.]+ all lie within 0\.\.255, "
                                         r"a windowed image rather than HU .*pass "
                                         r"units='windowed_uint8' \(namd predict --units windowed_uint8\)"):
        baseline_hu(grey, config, "crop.npy")
    lo, hi = config.data.window_hu
    np.testing.assert_allclose(baseline_hu(grey, config, "c", units="windowed_uint8"),
                               lo + grey / 255.0 * (hi - lo), atol=1e-3)


def test_a_crop_scaled_to_0_1_is_recognised_and_read_with_its_units(config):
    unit = _grey() / 255.0
    assert windowed_units(unit) == "windowed_unit"
    with pytest.raises(ValueError, match=r"values [\d.]+\.\.[\d.]+ all lie within 0\.\.1, an image "
                                         r"scaled to 0\.\.1 rather than HU.*units='windowed_unit'"):
        baseline_hu(unit, config, "c")
    lo, hi = config.data.window_hu
    np.testing.assert_allclose(baseline_hu(unit, config, "c", units="windowed_unit"),
                               lo + unit * (hi - lo), atol=1e-3)


def test_ambiguous_or_mismatched_windowed_units_are_refused(config):
    with pytest.raises(ValueError, match=r"grey values [\d.e-]+\.\.[\d.]+ all lie within 0\.\.1: an image "
                                         r"scaled to 0\.\.1 rather than 0\.\.255; pass units='windowed_unit'"):
        baseline_hu(_grey() / 255.0, config, "c", units="windowed_uint8")
    with pytest.raises(ValueError, match=r"a windowed_unit crop holds grey values 0\.\.1, got "
                                         r"[\d.]+\.\.[\d.]+; for grey 0\.\.255 pass units='windowed_uint8'"):
        baseline_hu(_grey(), config, "c", units="windowed_unit")
    with pytest.raises(ValueError, match="units must be one of HU, windowed_uint8, windowed_unit"):
        baseline_hu(_grey(), config, "c", units="grey")


def test_hu_crops_pass_whatever_their_dtype(config):
    real = disc(3, np.random.default_rng(0))
    for crop in (real, real.astype(np.float64), np.round(real).astype(np.int16)):
        assert windowed_units(crop) is None
        np.testing.assert_array_equal(baseline_hu(crop, config, "c"), crop.astype(np.float32))


@pytest.mark.parametrize("crop, dtype", [
    (np.full((SIZE, SIZE), -800 + 0j), "complex128"), (np.full((SIZE, SIZE), -800 + 5j, np.complex64), "complex64"),
    (np.zeros((SIZE, SIZE), bool), "bool"), (np.full((SIZE, SIZE), -800.0).astype(object), "object"),
    (np.full((SIZE, SIZE), "-800"), "<U4")])
def test_complex_boolean_and_object_crops_are_refused_naming_the_dtype(config, crop, dtype):
    for units in ("HU", "windowed_uint8"):
        with pytest.raises(ValueError, match=rf"^c: crop has dtype {dtype}: expected real numbers") as err:
            baseline_hu(crop, config, "c", units=units)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=rf"x: crop has dtype {dtype}"):
        check_crop(crop, SIZE, "x")


def test_cli_refuses_a_float_windowed_crop_in_one_line_before_any_model(config_only_run, capsys):
    d = config_only_run
    np.save(d / "w.npy", _grey())
    code = main(["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--crop", str(d / "w.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "w.npy: values" in err[0] and "--units windowed_uint8" in err[0]
    np.save(d / "x.npy", np.full((SIZE, SIZE), -800 + 1j))
    code = main(["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--crop", str(d / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "crop has dtype complex128" in err[0]


# -- sampler steps inside the schedule -------------------------------------------------------
@pytest.mark.parametrize("changes", [{}, {"steps_offset": 0}, {"steps_offset": 5},
                                     {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"},
                                     {"scheduler": "dpmsolver++"}])
def test_the_steps_rule_is_what_the_schedulers_do(config, changes):
    """steps_fit agrees with diffusers: every timestep inside [0, T), none repeated."""
    from namd.models.schedules import sampling_scheduler, training_scheduler

    train = dict(training_scheduler(config.diffusion).config)
    T = config.diffusion.num_train_timesteps
    for steps in sorted({*range(1, 1002, 9), 250, 333, 499, 500, 501, 998, 999, 1000, 1001}):
        cfg = validated_update(config.sampling, {**changes, "steps": steps})
        if steps_fit(cfg, steps, T):
            t = sampling_scheduler(train, cfg).timesteps
            assert 0 <= int(t.min()) and int(t.max()) < T and len(set(t.tolist())) == len(t), steps
        else:
            with pytest.raises(ValueError, match=rf"sampling\.steps = {steps} (exceeds|does not fit) the schedule"):
                sampling_scheduler(train, cfg)


def test_steps_past_the_schedule_are_one_line_with_the_allowed_range(config):
    assert max_sampling_steps(config.sampling, 1000) == 1000  # DDIM 'trailing', the CPU default
    config = validated_update(config, {"sampling.timestep_spacing": "leading", "sampling.steps_offset": 1})
    assert max_sampling_steps(config.sampling, 1000) == 999  # DDIM 'leading' + 1, the paper preset
    assert with_sampling(config, steps=999).sampling.steps == 999
    with pytest.raises(ValueError, match=r"^sampling\.steps = 1000 exceeds the schedule: ddim with "
                                         r"'leading' spacing and steps_offset 1 over 1000 training "
                                         r"timesteps allows 1 to 999 steps$"):
        with_sampling(config, steps=1000)
    dpm = validated_update(config.sampling, {"scheduler": "dpmsolver++", "steps": 1000})
    with pytest.raises(ValueError, match="dpmsolver\\+\\+ over 1000 training timesteps allows 1 to 999"):
        check_sampling_steps(dpm, 1000)


@pytest.mark.parametrize("command", ["predict", "sample"])
def test_cli_refuses_steps_past_the_schedule_before_any_model(config_only_run, capsys, command):
    d = config_only_run
    argv = (["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--crop", str(d / "c.npy")]
            if command == "predict" else ["sample", "--run", str(d / "run")])
    assert main([*argv, "--steps", "1001"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampling.steps = 1001 exceeds the schedule" in err[0]
    assert "allows 1 to 1000 steps" in err[0] and "IndexError" not in err[0]


def test_the_api_and_serve_refuse_steps_past_the_schedule(tiny_run):
    from namd.cohort.ehr import EHR
    from namd.inference.patient import predict_patient
    from namd.inference.pipeline import NAMDPipeline
    from namd.serve.session import Session

    crop = disc(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="allows 1 to 1000 steps"):
        predict_patient(tiny_run, crop, EHR(), steps=1001)  # before the model loads
    pipe = NAMDPipeline.from_run(tiny_run, device="cpu")
    with pytest.raises(ValueError, match="allows 1 to 1000 steps"):
        pipe.predict([crop], [EHR()], k=1, num_inference_steps=1001)
    with pytest.raises(ValueError, match="allows 1 to 1000 steps"):
        pipe(np.stack([crop]), [EHR()], k=1, num_inference_steps=1001)
    session = Session(pipe)
    try:
        with pytest.raises(ValueError, match="from 1 to 1000"):
            session.sampling(2, 1001, 23)
        assert session.sampling(2, 1000, 23) == (2, 1000, 23)
    finally:
        session.close()


def test_a_saved_config_with_bad_steps_is_caught_too(config_only_run, capsys):
    d = config_only_run
    config = load_config(base=json.loads(json.dumps(load_config("tiny", overrides=[*TINY, "sampling.steps=1001"])
                                                     .model_dump(mode="json"))))
    save_config(config, d / "run" / "config.yaml")
    assert main(["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--crop", str(d / "c.npy")]) == 1
    assert "sampling.steps = 1001 exceeds the schedule" in capsys.readouterr().err


def test_a_scan_crop_without_lung_names_the_centre(config_only_run, capsys):
    """A crop cut from a scan is read in HU, so one with nothing below 0 HU is not windowed: the
    centre lies outside the lung, and the line says to check it rather than to pass units."""
    import SimpleITK as sitk

    d = config_only_run
    sitk.WriteImage(sitk.GetImageFromArray(np.full((5, 40, 40), 40, np.int16)), str(d / "soft.nii.gz"))
    code = main(["predict", "--run", str(d / "run"), "--ehr", str(d / "e.json"), "--image",
                 str(d / "soft.nii.gz"), "--center", "20", "20", "2", "--voxel"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "soft.nii.gz: the crop at --center 20 20 2 (voxel) holds 40..40 HU" in err[0]
    assert "check the centre" in err[0] and "units" not in err[0]
