"""Typed configs: presets, files, overrides and their error messages."""

from __future__ import annotations

import pytest

from namd.config import PRESETS, ConfigError, NamdConfig, load_config, save_config


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, NamdConfig) and cfg.preset == preset


def test_defaults_are_tiny_and_paper_has_appendix_b_values():
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.model_dump() == {**NamdConfig().model_dump(), "preset": "tiny"}
    assert paper.data.crop_size == 64
    assert paper.vae.train.lr == pytest.approx(5e-5) and paper.vae.train.batch_size == 64
    assert paper.diffusion.beta_start == pytest.approx(8.5e-4)
    assert paper.diffusion.beta_end == pytest.approx(1.2e-2)
    assert paper.sampling.k == 20 and paper.sampling.steps == 50
    # the authors' loss weights stay in the paper preset where the CPU presets deviate
    assert (paper.vae.lambda_align, paper.vae.lambda_pred, paper.vae.lambda_kl) == (1.0, 0.2, 1e-6)
    assert paper.vae.select_on == "loss" and not paper.text.standardize
    assert tiny.vae.lambda_pred == pytest.approx(0.05)
    # the paper's diffusion objective stays in the paper preset (the CPU presets predict v)
    assert (paper.diffusion.prediction_type, paper.diffusion.cond_draws) == ("epsilon", 1)
    assert paper.diffusion.snr_gamma is None and paper.vae.lambda_grad == 0
    assert (tiny.diffusion.prediction_type, tiny.diffusion.cond_draws) == ("v_prediction", 8)
    # the paper tunes the soft prompts at every cond step; the CPU presets freeze them after 50
    assert paper.diffusion.prompt_steps is None and tiny.diffusion.prompt_steps == 50


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("tiny", overrides=["synth.pairs=12", "synth.split_fractions=[0.5, 0.25, 0.25]",
                                         "data.window_hu=[-1200, 600]"])
    assert cfg.synth.pairs == 12
    assert cfg.synth.split_fractions == (0.5, 0.25, 0.25)
    assert cfg.data.window_hu == (-1200.0, 600.0)


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("synth: {pairs: 7, seed: 3}\n")
    cfg = load_config("bench", file=f, overrides=["synth.seed=9"])
    assert cfg.synth.pairs == 7 and cfg.synth.seed == 9 and cfg.preset == "bench"


@pytest.mark.parametrize("kwargs,match", [
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"overrides": ["synth.pairz=3"]}, "synth.pairz"),
    ({"overrides": ["synth.pairs=-1"]}, "synth.pairs"),
    ({"overrides": ["synth.pairs"]}, "section.key=value"),
    ({"overrides": ["data.window_hu=[400, -1000]"]}, "low < high"),
    ({"overrides": ["synth.split_fractions=[0, 0, 0]"]}, "split_fractions"),
    ({"overrides": ["synth.split_fractions=[0.9, -0.1, 0.2]"]}, "split_fractions"),
    ({"overrides": ["synth.seed=-2"]}, "synth.seed"),
    ({"overrides": ["synth.malignant_share=1.5"]}, "malignant_share"),
    ({"file": "/nonexistent/config.yaml"}, "config file not found"),
])
def test_errors_name_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_config(**{"preset": "tiny", **kwargs})


def test_invalid_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("synth: {pairs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(file=f)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config("paper", overrides=["synth.pairs=33"])
    save_config(cfg, tmp_path / "config.yaml")
    import yaml

    again = load_config(base=yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_assignment_is_validated():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.synth.pairs = -5


def test_partial_override_keeps_each_stage_own_defaults():
    """`--set diffusion.prior.max_steps=5` must not reset the prior's lr to TrainConfig's."""
    from namd.config import load_config

    base = load_config("tiny")
    cfg = load_config("tiny", overrides=["diffusion.prior.max_steps=5", "diffusion.cond.max_steps=5",
                                         "evaluator.train.max_steps=5", "vae.train.max_steps=5"])
    for section in ("prior", "cond"):
        got, want = getattr(cfg.diffusion, section), getattr(base.diffusion, section)
        assert got.max_steps == 5 and got.lr == want.lr and got.batch_size == want.batch_size
    assert cfg.evaluator.train.lr == base.evaluator.train.lr
    assert cfg.vae.train.lr == base.vae.train.lr and cfg.vae.train.batch_size == base.vae.train.batch_size
    paper = load_config("paper", overrides=["diffusion.prior.max_steps=7"])
    assert paper.diffusion.prior.warmup_steps == 4000 and paper.diffusion.prior.max_steps == 7
