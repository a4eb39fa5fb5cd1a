"""Typed configuration loaded from YAML presets (`tiny`, `bench`, `paper`) plus overrides.

Each stage owns one section (see the modules of this package). Defaults are CPU-sized
(`tiny`); `paper` holds the paper's sizes and Appendix B hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from namd.config.base import FOUNDATION, Section, TrainConfig
from namd.config.corrflownet import CorrFlowNetConfig
from namd.config.data import DataConfig, IngestConfig, SynthConfig
from namd.config.ddlcxr import DDLCXRConfig
from namd.config.diffusion import DiffusionConfig, SamplingConfig, UNetConfig
from namd.config.evaluation import EvalConfig, EvaluatorConfig
from namd.config.flux import FluxConfig
from namd.config.foundation import FoundationConfig
from namd.config.imageflownet import ImageFlowNetConfig
from namd.config.mcwgan import McWGANConfig
from namd.config.readout import ReadoutConfig
from namd.config.sd15 import SD15Config
from namd.config.text import TextConfig
from namd.config.vae import VAEConfig

__all__ = [
    "NamdConfig", "TrainConfig", "DataConfig", "SynthConfig", "IngestConfig", "VAEConfig", "TextConfig",
    "DiffusionConfig", "UNetConfig", "SamplingConfig", "EvaluatorConfig", "EvalConfig", "FoundationConfig",
    "ConfigError", "FOUNDATION", "PRESETS", "load_config", "save_config", "validated_update",
]

PRESETS = ("tiny", "bench", "paper")
M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file, preset or override that cannot be used; the message names the key."""


class NamdConfig(Section):
    """The whole configuration of a run."""

    preset: str = "tiny"
    require_pretrained: bool = Field(
        False, description="refuse to train the VAE and the prior without local SD1.5 weights "
        "(vae.pretrained, diffusion.unet.pretrained): the paper fine-tunes SD1.5, and SD1.5-sized "
        "networks from scratch are a different method. The paper preset sets it; --from-scratch "
        "turns it off")
    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    vae: VAEConfig = VAEConfig()
    text: TextConfig = TextConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    eval: EvalConfig = EvalConfig()
    foundation: FoundationConfig = FoundationConfig()
    flux: FluxConfig = FluxConfig()
    sd15: SD15Config = SD15Config()
    ddlcxr: DDLCXRConfig = DDLCXRConfig()
    mcwgan: McWGANConfig = McWGANConfig()
    corrflownet: CorrFlowNetConfig = CorrFlowNetConfig()
    imageflownet: ImageFlowNetConfig = ImageFlowNetConfig()
    readout: ReadoutConfig = ReadoutConfig()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`, recursing into nested sections."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _preset_dict(name: str) -> dict[str, Any]:
    """The overrides a named preset applies on top of the defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("namd.config.presets").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _parse_override(item: str) -> dict[str, Any]:
    """Turn 'vae.train.lr=1e-4' into {'vae': {'train': {'lr': 1e-4}}} (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    return _nested(key.strip(), yaml.safe_load(raw))


def load_config(preset: str = "tiny", file: str | Path | None = None,
                overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> NamdConfig:
    """Resolve a config: defaults <- preset (or `base`, a saved config) <- YAML file <- overrides."""
    # Start from the full defaults so a partial section (`--set diffusion.prior.max_steps=50`)
    # keeps that stage's own defaults for the keys it omits.
    defaults = NamdConfig().model_dump(mode="json")
    layer = dict(base) if base is not None else {"preset": preset, **_preset_dict(preset)}
    merged = _deep_merge(defaults, layer)
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = _deep_merge(merged, yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    for item in overrides or []:
        merged = _deep_merge(merged, _parse_override(item))
    try:
        return NamdConfig.model_validate(merged)
    except ValidationError as exc:
        raise _field_error(exc) from exc


def _field_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first validation problem as one line naming the field (dotted, under `prefix`)."""
    first = exc.errors()[0]
    where = ".".join([*([prefix] if prefix else []), *(str(p) for p in first["loc"])])
    return ConfigError(f"config field {where}: {first['msg']} (got {first.get('input')!r})")


def validated_update(model: M, changes: Mapping[str, Any], prefix: str = "") -> M:
    """A copy of `model` with `changes` applied and every field validated again.

    Keys may be dotted ('sampling.k'). Use this instead of `model_copy(update=...)`, which
    skips validation (so `k=0` would pass): a bad value is a ConfigError naming the field,
    written under `prefix` when `model` is a section (prefix 'sampling' -> 'sampling.k').
    """
    data = model.model_dump()
    for key, value in changes.items():
        data = _deep_merge(data, _nested(key, value))
    try:
        return type(model).model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc, prefix) from exc


def _nested(key: str, value: Any) -> dict[str, Any]:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def save_config(config: NamdConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from namd.run.provenance import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
