"""`namd predict (--run RUN | --model FOLDER) --ehr EHR.json (--crop CROP.npy | --image SCAN
--center X Y Z)`: virtual one-year follow-ups and a malignancy estimate for one new patient.

The model is a trained run (with --method) or a folder written by `namd export`, loaded once as
a namd.inference.pipeline.NAMDPipeline.

The patient's samples are seeded from the id in EHR.json (patient_id / id / pid, with
nodule_id), else from a hash of the crop. OUT/prediction.json names the baseline by its
SHA-256, never by its path; OUT/run_info.json records the sampling settings used and the
command with its paths relative to the working folder, or hashed with --hash-ids.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from namd.config import methods


def add_model_args(p: argparse.ArgumentParser, run_help: str) -> None:
    """--run | --model, --method, --device: where a command's NAMDPipeline comes from."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help=run_help)
    model.add_argument("--model", help="a model folder written by `namd export`")
    p.add_argument("--method", choices=methods.loadable(), default=methods.REFERENCE,
                   help="which model of the run (with --run; default namd)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd predict`."""
    p = sub.add_parser("predict", help="follow-ups and malignancy estimate for one patient",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, "a trained run (cond, vae and evaluator stages)")
    p.add_argument("--ehr", required=True, help="JSON object with the 13 EHR fields (null = missing) "
                                                "and optionally patient_id / nodule_id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--crop", help=".npy crop at the run's crop size and pixel spacing (HU, or "
                                    "see --units)")
    src.add_argument("--image", help="a DICOM folder or a NIfTI / MHA file to cut the crop from")
    p.add_argument("--center", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="nodule centre in world mm (LPS), with --image")
    p.add_argument("--voxel", action="store_true", help="--center is a voxel index (column, row, slice)")
    p.add_argument("--units", choices=("HU", "windowed_uint8"), default="HU",
                   help="what --crop holds: HU (default) or grey values 0..255 of an image already "
                        "windowed with the run's data.window_hu")
    p.add_argument("--k", type=int, default=None, help="number of virtual follow-ups (default: config)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: config)")
    p.add_argument("--out", default=None, help="folder for prediction.json, samples.npy, grid.png")
    p.add_argument("--hash-ids", action="store_true",
                   help="run_info.json stores keyed hashes of the paths and ids of the command "
                        "(key from $NAMD_HASH_KEY, else random)")
    p.set_defaults(func=run)


def _baseline_crop(args: argparse.Namespace, config) -> tuple:
    """The baseline crop from --crop, or cut from --image at --center; and a description of it
    without any path (what prediction.json records)."""
    import numpy as np

    if args.crop:
        try:
            return np.load(args.crop, allow_pickle=False), {"input": "crop", "units": args.units}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{args.crop}: not a readable .npy array ({exc})") from None
    if not args.center:
        raise ValueError("--image needs --center X Y Z")
    if args.units != "HU":
        raise ValueError("--units applies to --crop; an --image is read in HU")
    from namd.inference.scan import crop_nodule_flagged

    x, y, z = args.center
    space = "voxel" if args.voxel else "world"
    crop, flags = crop_nodule_flagged(args.image, (x, y, z), space, config=config)
    return crop, {"input": "image", "center": [x, y, z], "space": space, "flags": flags}


def _config(args: argparse.Namespace):
    """The model's config with --k / --steps applied: checked before any model loads."""
    from namd.config import load_config
    from namd.inference.prediction import with_sampling
    from namd.run.contract import read_yaml
    from namd.run.layout import RunDir

    if args.run:
        saved = RunDir(args.run).saved_config()
        if saved is None:
            raise FileNotFoundError(f"{args.run}/config.yaml not found: is {args.run} a trained run?")
    else:
        path = Path(args.model) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{args.model}: not a namd model folder (no config.yaml); make "
                                    "one with `namd export RUN OUT`")
        saved = read_yaml(path)
    return with_sampling(load_config(base=saved), args.k, args.steps)


def run(args: argparse.Namespace) -> int:
    """Predict, print the estimate, and write the outputs when --out is given."""
    import numpy as np

    from namd.cohort.ingest.build import IdHasher
    from namd.inference.patient import load_patient
    from namd.inference.pipeline import NAMDPipeline
    from namd.inference.prediction import baseline_hu
    from namd.inference.sample_stage import save_grid
    from namd.run.provenance import atomic_dir, atomic_write_json, recorded_paths, write_run_info

    config = _config(args)
    ehr, ident = load_patient(args.ehr)
    raw, baseline = _baseline_crop(args, config)
    crop = baseline_hu(raw, config, args.crop or "the crop cut from --image", args.units)
    if args.model:
        pipe = NAMDPipeline.from_pretrained(args.model, device=args.device)
    else:
        pipe = NAMDPipeline.from_run(args.run, args.method, args.device, config=config)
    result = pipe.predict([raw], [ehr], k=args.k, num_inference_steps=args.steps, keys=[ident],
                          units=args.units)[0]
    print(result.report_sentence)
    print(f"evaluator on the baseline crop:        p = {result.p_baseline:.3f}")
    print(f"evaluator on {result.k} virtual follow-ups:   p = {result.p_followup_mean:.3f} "
          f"± {result.p_followup_std:.3f} (mean ± std over samples)")
    if result.brock is not None:
        print(f"Brock model (no image):                p = {result.brock:.3f}")
    if args.out:
        with (recorded_paths(hasher=IdHasher() if args.hash_ids else None) as paths,
              atomic_dir(args.out, overwrite=True) as tmp):
            atomic_write_json(tmp / "prediction.json", {**result.as_json(), "baseline": baseline})
            np.save(tmp / "samples.npy", result.samples)
            save_grid(tmp / "grid.png", crop, None, result.samples, tuple(config.data.window_hu),
                      f"virtual follow-ups, p = {result.p_followup_mean:.2f}")
            write_run_info(tmp, config, config.sampling.seed, stage="predict",
                           run=paths.path(args.run or args.model), seed_from=result.seed_from,
                           model_sha256=pipe.model_hash, method=pipe.method)
        print(f"outputs: {args.out}")
    return 0
