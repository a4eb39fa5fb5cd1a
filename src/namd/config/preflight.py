"""What a config needs from outside the repository before a stage may start, checked before
anything is written: local SD1.5 weights when the config requires them, LPIPS weights when
L_LPIPS is on, the CLIP text encoder when stage 1 conditions on the empty prompt.

A paper-preset run that lacks them would otherwise train SD1.5-sized networks from scratch, or
silently drop a loss term, for GPU days.
"""

from __future__ import annotations

from pathlib import Path

from namd.config import FOUNDATION, ConfigError, NamdConfig

SD15_HINT = ("the paper fine-tunes Stable Diffusion 1.5: point vae.pretrained and "
             "diffusion.unet.pretrained at a local SD1.5 folder (docs/paper-preset.md, 'Pretrained weights'), or "
             "pass --from-scratch to train these networks from random weights")


def clip_folder(config: NamdConfig) -> Path | None:
    """The local folder holding the CLIP text encoder of the empty-prompt null context: the
    configured diffusion.clip_text, else the SD1.5 pipeline folder above diffusion.unet.pretrained."""
    cfg = config.diffusion
    if cfg.clip_text:
        return Path(cfg.clip_text).expanduser()
    if cfg.unet.pretrained and cfg.unet.pretrained != FOUNDATION:
        unet = Path(cfg.unet.pretrained).expanduser()
        folder = unet.parent if unet.is_file() else unet  # a weights file -> its folder
        return folder.parent if folder.name == "unet" else folder
    return None


def _check_pretrained(field: str, value: str | None) -> None:
    """A required pretrained path that is unset or absent."""
    if not value or value == FOUNDATION:
        raise ConfigError(f"{field} is {value or 'unset'} and require_pretrained is on: {SD15_HINT}")
    if not Path(value).expanduser().exists():
        raise ConfigError(f"{field}: {value} not found (weights are read only from local paths)")


def check_stage(config: NamdConfig, stage: str) -> None:
    """Raise ConfigError (one line naming the field) when `stage` ('vae', 'prior', 'cond',
    'evaluator') cannot start with this config's external files."""
    vae = config.vae
    if stage == "cond" and config.diffusion.null_context == "empty_prompt" and config.text.encoder != "llm":
        raise ConfigError(f"diffusion.null_context = 'empty_prompt' is the language model's output for the "
                          f"empty sentence, but text.encoder is {config.text.encoder!r}: use "
                          "diffusion.null_context=zeros or text.encoder=llm")
    if stage == "vae":
        if config.require_pretrained:
            _check_pretrained("vae.pretrained", vae.pretrained)
        if vae.lambda_lpips > 0 and not vae.lpips_weights:
            raise ConfigError(
                f"vae.lambda_lpips is {vae.lambda_lpips} but vae.lpips_weights is unset: convert "
                "the official LPIPS VGG weights to safetensors (docs/paper-preset.md, 'LPIPS weights') and pass "
                "--set vae.lpips_weights=PATH, or opt out with --set vae.lambda_lpips=0")
        if vae.lpips_weights and vae.lambda_lpips > 0 and not Path(vae.lpips_weights).expanduser().is_file():
            raise ConfigError(f"vae.lpips_weights: {vae.lpips_weights} not found")
    if stage == "prior":
        if config.require_pretrained:
            _check_pretrained("diffusion.unet.pretrained", config.diffusion.unet.pretrained)
    if stage in ("prior", "cond") and config.diffusion.null_context == "empty_prompt":
        folder = clip_folder(config)
        if folder is None or not folder.exists():
            raise ConfigError(
                "diffusion.null_context is 'empty_prompt' (the authors' stage 1 conditions on "
                "SD1.5's CLIP embedding of the empty prompt) but no local CLIP text encoder was "
                f"found{f' at {folder}' if folder else ''}: set diffusion.clip_text to an SD1.5 "
                "folder with text_encoder/ and tokenizer/, or use diffusion.null_context=zeros")


def check_sd15(config: NamdConfig) -> None:
    """Raise ConfigError (one line naming the field) when SD1.5's row cannot start: its U-Net
    fine-tunes diffusion.unet.pretrained (required with require_pretrained: the paper preset
    without --from-scratch), and its text path CLIP needs a local SD1.5 folder (sd15.text=clip)."""
    if config.require_pretrained:
        _check_pretrained("diffusion.unet.pretrained", config.diffusion.unet.pretrained)
    if config.sd15.text == "clip":
        folder = clip_folder(config)
        if folder is None or not folder.exists():
            raise ConfigError(
                "sd15.text is 'clip' (SD1.5's own text encoder) but no local CLIP text encoder was "
                f"found{f' at {folder}' if folder else ''}: set diffusion.clip_text to an SD1.5 "
                "folder with text_encoder/ and tokenizer/, or use sd15.text=language_model")


def check_pipeline(config: NamdConfig) -> None:
    """Every training stage's check, before a whole run (`namd demo`) starts."""
    for stage in ("vae", "prior", "cond", "evaluator"):
        check_stage(config, stage)
