"""`namd predict --run RUN --ehr EHR.json (--crop CROP.npy | --image SCAN --center X Y Z)`:
virtual one-year follow-ups and a malignancy estimate for one new patient."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd predict`."""
    p = sub.add_parser("predict", help="follow-ups and malignancy estimate for one patient",
                       description=__doc__)
    p.add_argument("--run", required=True, help="a trained run (cond, vae and evaluator stages)")
    p.add_argument("--ehr", required=True, help="JSON object with the 13 EHR fields (null = missing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--crop", help=".npy float HU crop at the run's crop size and pixel spacing")
    src.add_argument("--image", help="a DICOM folder or a NIfTI / MHA file to cut the crop from")
    p.add_argument("--center", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="nodule centre in world mm (LPS), with --image")
    p.add_argument("--voxel", action="store_true", help="--center is a voxel index (column, row, slice)")
    p.add_argument("--k", type=int, default=None, help="number of virtual follow-ups (default: config)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: config)")
    p.add_argument("--out", default=None, help="folder for prediction.json, samples.npy, grid.png")
    p.set_defaults(func=run)


def _baseline_crop(args: argparse.Namespace, config) -> tuple:
    """The baseline crop from --crop, or cut from --image at --center; and its description."""
    import numpy as np

    if args.crop:
        try:
            return np.load(args.crop, allow_pickle=False), args.crop
        except (OSError, ValueError) as exc:
            raise ValueError(f"{args.crop}: not a readable .npy array ({exc})") from None
    if not args.center:
        raise ValueError("--image needs --center X Y Z")
    from namd.cohort.ingest.crop import CropGeometry, Position, extract_crop, locate
    from namd.cohort.ingest.volume import open_volume

    volume = open_volume(args.image)
    x, y, z = args.center
    k, centre = locate(volume, Position(x, y, z, space="voxel" if args.voxel else "world"))
    crop, flags = extract_crop(volume, k, centre, CropGeometry(config.data.crop_size,
                                                              config.data.pixel_spacing_mm))
    return crop, f"{args.image} at {x:g}, {y:g}, {z:g}" + (f" ({', '.join(flags)})" if flags else "")


def run(args: argparse.Namespace) -> int:
    """Predict, print the estimate, and write the outputs when --out is given."""
    import numpy as np

    from namd.config import load_config
    from namd.predict import load_ehr, predict_patient
    from namd.rundir import RunDir
    from namd.runinfo import atomic_dir, atomic_write_json, write_run_info
    from namd.sampling_io import save_grid

    run_dir = RunDir(args.run)
    if run_dir.saved_config() is None:
        raise FileNotFoundError(f"{run_dir.path}/config.yaml not found: is {run_dir.path} a trained run?")
    config = load_config(base=run_dir.saved_config())
    ehr = load_ehr(args.ehr)
    crop, source = _baseline_crop(args, config)
    result = predict_patient(run_dir, crop, ehr, config, k=args.k, steps=args.steps)
    print(result.report_sentence)
    print(f"evaluator on the baseline crop:        p = {result.p_baseline:.3f}")
    print(f"evaluator on {result.k} virtual follow-ups:   p = {result.p_followup_mean:.3f} "
          f"± {result.p_followup_std:.3f} (mean ± std over samples)")
    if result.brock is not None:
        print(f"Brock model (no image):                p = {result.brock:.3f}")
    if args.out:
        with atomic_dir(args.out, overwrite=True) as tmp:
            atomic_write_json(tmp / "prediction.json", {**result.as_json(), "baseline_source": source})
            np.save(tmp / "samples.npy", result.samples)
            save_grid(tmp / "grid.png", np.asarray(crop, np.float32), None, result.samples,
                      tuple(config.data.window_hu), f"virtual follow-ups, p = {result.p_followup_mean:.2f}")
            write_run_info(tmp, config, config.sampling.seed, stage="predict", run=str(run_dir.path))
        print(f"outputs: {args.out}")
    return 0
