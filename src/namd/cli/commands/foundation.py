"""`namd foundation --out DIR`: build the weights the CPU presets fine-tune (SD1.5's stand-in).

Draws `foundation.crops` crops from the synthetic generator's unpaired stream with the
foundation's own seed (no run trains or tests on them: a run of that seed is refused), trains a
plain VAE (no L_align, no L_pred: `foundation.vae`) and then an unconditional U-Net prior on its
latents (`foundation.prior`) through the same stages and trainer as a run, and writes DIR:
vae/ and unet/ in float16, foundation.json (built for which crops and networks, from what, the
sha256 of each file) and a model card. The networks, crop geometry and noise schedule are the
config's, so the foundation fits the runs of that config. Resumable: the work folder DIR.build
keeps finished stages; it is removed once DIR is written.

The shipped foundation was built by `namd foundation --out src/namd/models/weights/foundation`
(docs/foundation.md).
"""

from __future__ import annotations

import argparse

from namd.cli.options import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd foundation`."""
    parser = sub.add_parser("foundation", help="build the pretrained VAE and U-Net prior runs fine-tune",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="foundation folder to write (replaced if present)")
    add_config_args(parser)
    parser.set_defaults(func=run)


def build_config(config):  # noqa: ANN001, ANN201 - NamdConfig in, NamdConfig out
    """The run config of the build: the foundation's crops and training on the config's own
    networks, from scratch, without L_align."""
    from namd.config import validated_update
    from namd.models.foundation import FOUNDATION_SEED

    f = config.foundation
    return validated_update(config, {
        "synth.seed": FOUNDATION_SEED, "synth.pairs": 0, "synth.unpaired": f.crops,
        "synth.known_futures": 0, "synth.split_fractions": (0.95, 0.05, 0.0),
        "vae.pretrained": None, "diffusion.unet.pretrained": None, "require_pretrained": False,
        "vae.train": f.vae.model_dump(), "diffusion.prior": f.prior.model_dump()})


def run(args: argparse.Namespace) -> int:
    """Build the cohort, the plain VAE and the prior in DIR.build, then write DIR."""
    import shutil
    from pathlib import Path

    from namd.cli.options import resolve_config
    from namd.cohort.synthetic import build_synthetic_cohort
    from namd.models.foundation import write_foundation
    from namd.run.layout import RunDir
    from namd.training import diffusion, vae

    out = Path(args.out)
    config = build_config(resolve_config(args))
    work = RunDir(out.with_name(out.name + ".build"))
    work.path.mkdir(parents=True, exist_ok=True)
    if not work.is_done("cohort"):
        shutil.rmtree(work.stage("cohort"), ignore_errors=True)
        build_synthetic_cohort(work.stage("cohort"), config)
    vae.run_stage(config, work, method="no_align", resume=True)
    if not work.is_done("prior_no_align"):
        diffusion.run_stage(config, work, stage="prior", method="no_align", resume=True)
    write_foundation(out, work.stage("vae_no_align") / "autoencoder", work.stage("prior_no_align") / "unet",
                     manifest(config, work, command_line(args)), model_card)
    shutil.rmtree(work.path)
    print(out)
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command that built it, as a user would retype it (for the manifest and the card)."""
    parts = ["namd foundation", f"--out {args.out}", *([f"--preset {args.preset}"] if args.preset else []),
             *([f"--config {args.config}"] if args.config else []), *(f"--set {o}" for o in args.overrides)]
    return " ".join(parts)


def manifest(config, work, command: str) -> dict:  # noqa: ANN001 - NamdConfig, RunDir
    """foundation.json less its files: what the weights fit, where they come from, how trained."""
    import time

    from namd.cohort.store import Cohort
    from namd.models.foundation import SCHEDULE_FIELDS, UNET_FIELDS, VAE_FIELDS
    from namd.run.provenance import package_versions
    from namd.run.readers import read_json

    cohort = Cohort(work.stage("cohort"))
    report = read_json(work.stage("vae_no_align") / "report.json")
    prior = read_json(work.stage("prior_no_align") / "run_info.json")
    vae, unet = config.vae.model_dump(mode="json"), config.diffusion.unet.model_dump(mode="json")
    return {
        "name": "namd CPU foundation", "built": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": command, "versions": package_versions(),
        "data": {"crop_size": config.data.crop_size, "pixel_spacing_mm": config.data.pixel_spacing_mm,
                 "window_hu": list(config.data.window_hu)},
        "source": {"generator": cohort.meta["generator"], "stream": "unpaired", "seed": config.synth.seed,
                   "crops": len(cohort), "train_crops": len(cohort.crops("train")),
                   "val_crops": len(cohort.crops("val"))},
        "vae": {**{k: vae[k] for k in VAE_FIELDS},
                "train": config.vae.train.model_dump(mode="json"),
                "val": {k: report[k] for k in ("recon_psnr", "recon_ssim", "recon_mae")}},
        "unet": {**{k: unet[k] for k in UNET_FIELDS},
                 "cross_attention_dim": _cross_dim(work),
                 "train": config.diffusion.prior.model_dump(mode="json"),
                 "best_val_mse": prior.get("best_val")},
        "schedule": {k: getattr(config.diffusion, k) for k in SCHEDULE_FIELDS},
    }


def _cross_dim(work) -> int:  # noqa: ANN001 - RunDir
    """The prior's cross-attention width (the text encoder's D it was built with)."""
    from namd.run.readers import read_json

    return int(read_json(work.stage("prior_no_align") / "unet" / "config.json")["cross_attention_dim"])


def model_card(info: dict) -> str:
    """README.md of the foundation (from its manifest): what it is, what it was built from and
    for, how well it does, and the size and sha256 of every file."""
    v, u, s, d = info["vae"], info["unet"], info["source"], info["data"]
    files = "\n".join(f"| `{name}` | {e['bytes']:,} | `{e['sha256']}` |" for name, e in info["files"].items())
    schedule = ", ".join(f"{k} {val}" for k, val in info["schedule"].items())
    return f"""# namd CPU foundation

The weights the CPU presets (`tiny`, `bench`) fine-tune, as the paper fine-tunes Stable
Diffusion 1.5 (Appendix B). `vae/`: a plain KL autoencoder (no L_align, no L_pred). `unet/`: an
unconditional U-Net prior (Equation 9, null context) on its latents. Both in diffusers' layout,
stored in {info['dtype']}, named `namd:foundation` by `vae.pretrained` and
`diffusion.unet.pretrained` (docs/foundation.md).

Not a medical model and no patient data: a starting point for fine-tuning on crops of this
geometry. Research use only, not a medical device.

## Provenance

- Built {info['built']} by `{info['command']}` (the config's `foundation` section), Python
  {info['versions'].get('python')}, torch {info['versions'].get('torch')}, diffusers
  {info['versions'].get('diffusers')}.
- Data: {s['crops']} crops of the synthetic generator `{s['generator']}`, its {s['stream']} stream
  with seed {s['seed']} ({s['train_crops']} to train, {s['val_crops']} to validate). No run trains or
  tests on them: a synthetic cohort of that seed is refused.

## What it fits

{d['crop_size']}-pixel crops at {d['pixel_spacing_mm']} mm, HU window {d['window_hu']}; VAE blocks
{v['block_out_channels']}, {v['layers_per_block']} layer(s) per block, {v['latent_channels']} latent
channels; U-Net blocks {u['block_out_channels']}, cross-attention width {u['cross_attention_dim']};
noise schedule: {schedule}. Anything else is refused in one line
(`namd.models.foundation.check_fits`).

## Training and quality

- VAE: {v['train']['max_steps']} steps of batch {v['train']['batch_size']}, lr {v['train']['lr']}
  ({v['train']['schedule']}); on its validation crops PSNR {v['val']['recon_psnr']:.2f} dB, SSIM
  {v['val']['recon_ssim']:.3f}, MAE {v['val']['recon_mae']:.1f} HU.
- U-Net prior: {u['train']['max_steps']} steps of batch {u['train']['batch_size']}, lr {u['train']['lr']}
  ({u['train']['schedule']}); best validation loss {u['best_val_mse']:.4f}.

## Files

| file | bytes | sha256 |
|---|---:|---|
{files}

Each file is checked against `foundation.json` before every load.
"""
