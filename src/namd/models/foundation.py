"""namd's CPU foundation: the shipped stand-in for Stable Diffusion 1.5's weights (issue 28).

The paper fine-tunes everything from pretrained SD1.5 (Appendix B): the VAE (with L_align), the
U-Net prior, then the conditional U-Net. At CPU size no such weights exist, so namd ships its
own, built once by one command from data no run trains or tests on:

    namd foundation --out src/namd/models/weights/foundation

trains a plain KL autoencoder (no L_align, no L_pred) on crops of the synthetic generator's
unpaired stream drawn with a seed of its own (`FOUNDATION_SEED`), then an unconditional U-Net
prior on its latents, and stores both in SD1.5's folder layout (`vae/`, `unet/`) in float16,
with `foundation.json` (what they were built for and from, the sha256 of every file) and a
model card (`README.md`). The CPU presets point `vae.pretrained` and
`diffusion.unet.pretrained` at it by the name `namd:foundation`; the paper preset keeps SD1.5.

A foundation fits only the crops and networks it was built for: `check_fits` refuses, in one
line naming the field, a crop size, pixel spacing, HU window, network layout or noise schedule
that differs, and a synthetic cohort drawn with the foundation's own seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from namd.config import FOUNDATION, ConfigError, NamdConfig
from namd.run.provenance import file_sha256

FOUNDATION_DIR = Path(__file__).with_name("weights") / "foundation"
MANIFEST = "foundation.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file name in vae/ and unet/
FOUNDATION_SEED = 28_000_001  # the synthetic seed of its crops; no run uses it (check_fits)
VAE_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "in_channels",
              "norm_num_groups", "output")
UNET_FIELDS = ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups")
SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
REBUILD = ("set vae.pretrained=null and diffusion.unet.pretrained=null to train from scratch, or "
           "build a foundation for them with `namd foundation --out DIR` (docs/foundation.md)")


def uses_foundation(config: NamdConfig) -> bool:
    """Whether the VAE or the U-Net of this config starts from the shipped foundation."""
    return FOUNDATION in (config.vae.pretrained, config.diffusion.unet.pretrained)


def read_manifest(folder: Path = FOUNDATION_DIR) -> dict[str, Any]:
    """foundation.json of a foundation folder (one-line error when absent or unreadable)."""
    from namd.run.readers import read_json

    return read_json(Path(folder) / MANIFEST, writer="namd foundation", keys=("data", "source", "files"))


def verify(folder: Path = FOUNDATION_DIR) -> dict[str, Any]:
    """The manifest, after checking every weight file against the sha256 it records."""
    manifest = read_manifest(folder)
    for name, entry in manifest["files"].items():
        actual = file_sha256(Path(folder) / name)
        if actual != entry["sha256"]:
            raise ValueError(f"{Path(folder) / name}: sha256 {actual} does not match "
                             f"{MANIFEST} ({entry['sha256']}): the file is damaged or replaced")
    return manifest


def resolve(value: str) -> Path:
    """The local path a `pretrained` field names: the shipped foundation for `namd:foundation`
    (its files verified first), else the path itself."""
    if value == FOUNDATION:
        verify(FOUNDATION_DIR)
        return FOUNDATION_DIR
    return Path(value).expanduser()


def _differs(field: str, ours: Any, theirs: Any) -> str | None:
    """A sentence when a config value differs from the foundation's (numbers to 1e-9)."""
    if isinstance(theirs, list):
        ours = list(ours)
    same = (abs(float(ours) - float(theirs)) < 1e-9 if isinstance(theirs, float) else ours == theirs)
    return None if same else f"{field} is {ours} here but the foundation was built for {theirs}"


def _mismatches(config: NamdConfig, manifest: dict[str, Any]) -> list[str]:
    """Every field the foundation fixes that this config sets differently."""
    found: list[str | None] = []
    data = manifest["data"]
    found += [_differs(f"data.{k}", getattr(config.data, k), data[k])
              for k in ("crop_size", "pixel_spacing_mm", "window_hu")]
    if config.vae.pretrained == FOUNDATION:
        found += [_differs(f"vae.{k}", getattr(config.vae, k), manifest["vae"][k]) for k in VAE_FIELDS]
    if config.diffusion.unet.pretrained == FOUNDATION:
        found += [_differs(f"diffusion.unet.{k}", getattr(config.diffusion.unet, k), manifest["unet"][k])
                  for k in UNET_FIELDS]
        found += [_differs(f"diffusion.{k}", getattr(config.diffusion, k), manifest["schedule"][k])
                  for k in SCHEDULE_FIELDS]
    return [m for m in found if m]


def check_fits(config: NamdConfig, cohort_meta: dict[str, Any] | None = None) -> None:
    """ConfigError in one line when the foundation does not fit this config (or the cohort's
    crop size and spacing, or a synthetic cohort drawn from the foundation's own seed)."""
    if not uses_foundation(config):
        return
    manifest = read_manifest(FOUNDATION_DIR)
    wrong = _mismatches(config, manifest)
    if cohort_meta is not None:
        wrong += [m for m in (_differs("the cohort's crop_size", cohort_meta.get("crop_size"),
                                       manifest["data"]["crop_size"]),
                              _differs("the cohort's pixel_spacing_mm", cohort_meta.get("pixel_spacing_mm"),
                                       manifest["data"]["pixel_spacing_mm"])) if m]
        source = manifest["source"]
        if (cohort_meta.get("source") == "synthetic" and cohort_meta.get("generator") == source["generator"]
                and cohort_meta.get("seed") == source["seed"]):
            wrong.append(f"the cohort is the synthetic one of seed {source['seed']}, whose unpaired "
                         "crops the foundation was trained on (choose another synth.seed)")
    if wrong:
        raise ConfigError(f"{FOUNDATION}: {wrong[0]}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
                          + f"; {REBUILD}")


def started_from(value: str | None) -> dict[str, Any] | None:
    """What a stage records of the foundation it started from (its name, build and the sha256
    of each file) when `value` (a `pretrained` field) names it; None otherwise."""
    if value != FOUNDATION:
        return None
    manifest = read_manifest(FOUNDATION_DIR)
    return {"name": FOUNDATION, "built": manifest.get("built"), "source": manifest["source"],
            "files": {k: v["sha256"] for k, v in manifest["files"].items()}}


# -- building it (`namd foundation`) ------------------------------------------------------------
def _half_copy(src: Path, dst: Path) -> None:
    """A diffusers model folder (config.json + safetensors) with its weights in float16."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    state = {k: v.half().contiguous() for k, v in load_file(str(src / WEIGHTS)).items()}
    save_file(state, str(dst / WEIGHTS), metadata={"format": "pt", "dtype": "float16"})


def write_foundation(out: Path, vae_dir: Path, unet_dir: Path, manifest: dict[str, Any],
                     card: Callable[[dict[str, Any]], str]) -> Path:
    """Write a foundation folder atomically: vae/ and unet/ (float16), foundation.json with the
    sha256 and size of every file, and the model card README.md that `card` makes of it."""
    from namd.run.provenance import atomic_dir

    with atomic_dir(Path(out), overwrite=True) as tmp:
        for name, src in (("vae", vae_dir), ("unet", unet_dir)):
            _half_copy(src, tmp / name)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {**manifest, "dtype": "float16", "files": {
            p.relative_to(tmp).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "README.md").write_text(card(manifest))
    return Path(out)
