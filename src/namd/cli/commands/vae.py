"""`namd vae report RUN [--method no_align]`: reconstruction quality and latent alignment of a trained
VAE stage (MAE in HU, PSNR, SSIM, distance Spearman, k-NN R^2 of diameter, probe AUROC), with
the t-SNE of Figure 2 and a crop/reconstruction grid, written into the stage folder."""

from __future__ import annotations

import argparse
import json

from namd.cli.options import add_method_arg

KEYS = ("recon_mae", "recon_psnr", "recon_ssim", "distance_spearman", "knn_r2_diameter",
        "probe_auroc", "linear_probe_auroc", "distance_spearman_flat", "knn_r2_diameter_flat")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd vae report`."""
    parser = sub.add_parser("vae", help="inspect the trained VAE", description=__doc__)
    inner = parser.add_subparsers(dest="vae_command", metavar="ACTION", required=True)
    rep = inner.add_parser("report", help="reconstruction and alignment report of RUN/vae")
    rep.add_argument("run", help="run directory")
    add_method_arg(rep, "VAE to report on (e.g. no_align: RUN/vae_no_align)")
    rep.add_argument("--split", default="val", choices=("train", "val", "test"),
                     help="crops to evaluate (default: val)")
    rep.add_argument("--json", action="store_true", help="print the whole report as JSON")
    rep.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Recompute the report of a finished VAE stage with the config it was trained with."""
    from namd.cohort.store import Cohort
    from namd.config import NamdConfig, methods
    from namd.evaluation.vae_report import write_report
    from namd.run.contract import command_for
    from namd.run.layout import RunDir

    run, name = RunDir(args.run), methods.get(args.method).uses["vae"]
    if not run.is_done(name):
        raise FileNotFoundError(f"{run.stage(name)} is not a finished VAE stage: run "
                                f"`{command_for(args.run, name)}` first")
    info = json.loads((run.stage(name) / "run_info.json").read_text())
    config = NamdConfig.model_validate(info["config"])
    report = write_report(run.stage(name), Cohort(run.require("cohort", "vae report")), config, args.split)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{name} on {args.split} ({report['n_crops']} crops, {report['variant']}):")
    for key in KEYS:
        value = report.get(key)
        print(f"  {key:<24} {'n/a' if value is None else f'{value:.4f}'}")
    if report.get("target_entropy") is not None:
        print(f"  {'target_entropy (P)':<24} {report['target_entropy']:.4f} (uniform "
              f"{report['target_entropy_uniform']:.4f} at batch {report['target_entropy_batch']}, "
              f"{report.get('features')} features)")
    print(f"  -> {run.stage(name) / 'report.json'}, tsne.png, reconstructions.png")
    return 0
