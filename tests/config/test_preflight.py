"""What the paper preset needs from outside the repository is checked before a stage starts:
local SD1.5 weights (unless --from-scratch), LPIPS weights when L_LPIPS is on (unless opted out),
the CLIP text encoder of the empty-prompt null context. Refused configs are never saved."""

from __future__ import annotations

import pytest
import yaml
from helpers import save_tiny_clip

from namd.cli.main import main
from namd.config import ConfigError, load_config
from namd.config.preflight import check_pipeline, check_stage


def test_paper_preset_refuses_to_train_without_sd15_weights():
    paper = load_config("paper")
    assert paper.require_pretrained and paper.diffusion.null_context == "empty_prompt"
    with pytest.raises(ConfigError, match=r"vae.pretrained is unset .* --from-scratch"):
        check_stage(paper, "vae")
    with pytest.raises(ConfigError, match=r"diffusion.unet.pretrained is unset"):
        check_stage(paper, "prior")
    check_stage(paper, "evaluator")  # needs nothing from outside
    check_pipeline(load_config("tiny"))  # the CPU presets need nothing either


def test_pretrained_paths_must_exist(tmp_path):
    cfg = load_config("paper", overrides=[f"vae.pretrained={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="vae.pretrained: .*nope not found"):
        check_stage(cfg, "vae")


def test_lpips_on_needs_weights_or_an_explicit_opt_out(tmp_path):
    scratch = load_config("paper", overrides=["require_pretrained=false"])
    assert scratch.vae.lambda_lpips == 1.0
    with pytest.raises(ConfigError, match=r"vae.lpips_weights is unset: convert .* vae.lambda_lpips=0"):
        check_stage(scratch, "vae")
    check_stage(load_config("paper", overrides=["require_pretrained=false", "vae.lambda_lpips=0"]), "vae")
    with pytest.raises(ConfigError, match="lpips_weights: .*absent.safetensors not found"):
        check_stage(load_config("paper", overrides=["require_pretrained=false",
                                                    f"vae.lpips_weights={tmp_path / 'absent.safetensors'}"]), "vae")


def test_empty_prompt_needs_a_language_model_in_stage_two():
    cfg = load_config("paper", overrides=["require_pretrained=false", "text.encoder=structured"])
    with pytest.raises(ConfigError, match="text.encoder is 'structured'"):
        check_stage(cfg, "cond")
    check_stage(load_config("tiny", overrides=["text.encoder=structured"]), "cond")  # zeros: fine


def test_clip_folder_is_the_sd15_folder_above_the_unet_weights(tmp_path):
    from namd.config.preflight import clip_folder

    weights = tmp_path / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    for given in (weights, weights.parent, tmp_path / "sd15"):
        cfg = load_config("paper", overrides=[f"diffusion.unet.pretrained={given}"])
        assert clip_folder(cfg) == tmp_path / "sd15"


def test_empty_prompt_needs_a_local_clip(tmp_path):
    cfg = load_config("paper", overrides=["require_pretrained=false"])
    with pytest.raises(ConfigError, match="diffusion.clip_text"):
        check_stage(cfg, "prior")
    with pytest.raises(ConfigError, match="diffusion.clip_text"):
        check_stage(cfg, "cond")
    clip = save_tiny_clip(tmp_path / "sd15")
    check_stage(load_config("paper", overrides=["require_pretrained=false", f"diffusion.clip_text={clip}"]), "prior")
    check_stage(load_config("paper", overrides=["require_pretrained=false",
                                                "diffusion.null_context=zeros"]), "cond")


def test_cli_refuses_in_one_line_and_saves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--run", str(run), "--preset", "paper"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vae.pretrained is unset" in err and "--from-scratch" in err
    assert not (run / "config.yaml").exists()
    assert main(["demo", "--out", str(run), "--preset", "paper"]) == 1
    assert "vae.pretrained is unset" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()


def test_from_scratch_is_saved_with_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    # --from-scratch lifts the SD1.5 requirement; the LPIPS one still stops this run before it starts
    assert main(["train", "vae", "--run", str(run), "--preset", "paper", "--from-scratch"]) == 1
    assert "vae.lpips_weights is unset" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    # once every check passes the resolved config is saved, with the choice in it (a missing
    # cohort then stops the stage itself)
    assert main(["train", "vae", "--run", str(run), "--preset", "paper", "--from-scratch",
                 "--set", "vae.lambda_lpips=0"]) == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["require_pretrained"] is False and saved["vae"]["lambda_lpips"] == 0
    assert "cohort" in capsys.readouterr().err


def test_from_scratch_in_a_cpu_preset_leaves_the_shipped_foundation(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "vae", "--run", str(run), "--from-scratch"]) == 1  # no cohort yet
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["vae"]["pretrained"] is None and saved["diffusion"]["unet"]["pretrained"] is None
    assert load_config("tiny").vae.pretrained == "namd:foundation"  # the default it replaced
