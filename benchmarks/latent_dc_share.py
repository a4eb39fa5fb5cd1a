"""How much of the latent's variance across crops sits in the per-channel spatial means.

    python benchmarks/latent_dc_share.py --run RUN [--set data.crop_size=32 ...]

L_align (with the authors' mean-pooled projection) makes the four channel means of a latent
follow the nodule features; this measures, for RUN/vae and RUN/vae_no_align, what share of the
scaled latents' variance over the validation crops those channel means carry (the DC share),
to see what the alignment takes from the reconstruction. Prints one line per VAE, then the load
it ran under.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import load_line, machine, start_load

from namd.cohort.store import Cohort
from namd.config import load_config
from namd.models.vae import load_trained_vae
from namd.training.vae import encode_source, split_source, training_statistics


def main() -> None:
    """Encode the val split with each VAE of the run and print the variance shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides the run was trained with (crop size, spacing)")
    args = parser.parse_args()
    before = start_load()
    config = load_config(args.preset, overrides=args.set)
    cohort = Cohort(args.run / "cohort")
    source = split_source(cohort, "val", config, training_statistics(cohort.crops("train"), "balanced"))
    for variant in ("vae", "vae_no_align"):
        if not (args.run / variant).exists():
            continue
        vae, scale = load_trained_vae(args.run / variant)
        z = encode_source(vae, source, 32) * scale
        total = float(z.var(0).sum())
        dc = float(z.mean((2, 3)).var(0).sum()) * z.shape[2] * z.shape[3]
        print(f"{variant}: variance of the scaled latents over {len(z)} val crops {total:.1f}, "
              f"of which in the channel means {dc / total:.1%}")
    print(load_line(machine(before)))


if __name__ == "__main__":
    main()
