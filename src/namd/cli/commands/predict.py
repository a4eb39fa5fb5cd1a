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
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from namd.config import methods

GRID_MAX = 40  # follow-ups drawn in grid.png: 4 rows of 10 stay readable (1,760 x 935 px)


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
    p.add_argument("--units", choices=("HU", "windowed_uint8", "windowed_unit"), default="HU",
                   help="what --crop holds: HU (default), or grey values 0..255 (windowed_uint8) "
                        "or 0..1 (windowed_unit) of an image already windowed with the run's "
                        "data.window_hu")
    p.add_argument("--k", type=int, default=None, help="number of virtual follow-ups (default: config)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: config)")
    p.add_argument("--new-nodule", action="store_true",
                   help="the nodule was not seen on an earlier screen: the readout categorises "
                        "the baseline by Lung-RADS' new-nodule rules")
    p.add_argument("--out", default=None, help="folder for prediction.json, samples.npy, grid.png "
                                              f"(the first {GRID_MAX} follow-ups), written atomically")
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
    from namd.inference.prediction import looks_windowed
    from namd.inference.scan import crop_nodule_flagged

    x, y, z = args.center
    space = "voxel" if args.voxel else "world"
    crop, flags = crop_nodule_flagged(args.image, (x, y, z), space, config=config)
    if looks_windowed(crop):  # read in HU, so not windowed: nothing below 0 HU, no lung in it
        raise ValueError(f"{args.image}: the crop at --center {x:g} {y:g} {z:g} ({space}) holds "
                         f"{crop.min():.0f}..{crop.max():.0f} HU, no lung or air below 0 HU: check "
                         "the centre (world mm, LPS; --voxel for a voxel index)")
    return crop, {"input": "image", "center": [x, y, z], "space": space, "flags": flags}


def _config(args: argparse.Namespace):
    """The model's config with --k / --steps applied: checked before any model loads."""
    from namd.config import load_config
    from namd.inference.prediction import with_sampling
    from namd.run.layout import RunDir
    from namd.run.readers import read_yaml

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


def _estimate(args: argparse.Namespace, config) -> str:
    """The request's estimated time, memory and disk (namd.inference.estimate), from the
    model's files before any of them loads."""
    from namd.inference.estimate import Request, estimate, safe_model_cost
    from namd.inference.pipeline import run_files
    from namd.models.device import resolve_device
    from namd.run.layout import RunDir

    folder = Path(args.model) if args.model else None  # an exported folder: its own file names
    files = ({p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
             if folder else run_files(RunDir(args.run), dict(methods.get(args.method).uses)))
    s = config.sampling
    steps = args.steps if args.steps is not None or folder else methods.sampler_steps(
        config, methods.get(args.method))
    request = Request(1, s.k, steps or s.steps, config.data.crop_size, s.guidance_scale != 1.0,
                      s.max_batch, samples_in_memory=True)
    return estimate(request, safe_model_cost(files), str(resolve_device(args.device))).line()


def run(args: argparse.Namespace) -> int:
    """Predict, print the estimate, and write the outputs when --out is given."""
    from namd.cohort.ingest.build import IdHasher
    from namd.inference.patient import load_patient
    from namd.inference.pipeline import NAMDPipeline
    from namd.inference.prediction import baseline_hu

    hasher = IdHasher() if args.hash_ids else None  # a weak key stops before any input is read
    config = _config(args)
    ehr, ident = load_patient(args.ehr)
    raw, baseline = _baseline_crop(args, config)
    crop = baseline_hu(raw, config, args.crop or "the crop cut from --image", args.units)
    print(_estimate(args, config), flush=True)
    if args.model:
        pipe = NAMDPipeline.from_pretrained(args.model, device=args.device)
    else:
        pipe = NAMDPipeline.from_run(args.run, args.method, args.device, config=config)
    result = pipe.predict([raw], [ehr], k=args.k, num_inference_steps=args.steps, keys=[ident],
                          units=args.units, new_nodule=args.new_nodule)[0]
    print(result.report_sentence)
    print(f"evaluator on the baseline crop:        p = {result.p_baseline:.3f}")
    print(f"evaluator on {result.k} virtual follow-ups:   p = {result.p_followup_mean:.3f} "
          f"± {result.p_followup_std:.3f} (mean ± std over samples)")
    if result.brock is not None:
        print(f"Brock model (no image):                p = {result.brock:.3f}")
    for line in readout_lines(result.readout):
        print(line)
    if args.out:
        _write_outputs(args, config, pipe, result, crop, baseline, hasher)
        print(f"outputs: {args.out}")
    return 0


def readout_lines(readout: dict) -> list[str]:
    """The radiologist's readout as `namd predict` prints it: the baseline's categories, the
    one-sentence summary of the follow-ups and the notice (nothing without a readout)."""
    if not readout:
        return []
    base = readout["baseline_category"]
    shown = {src: base[src].get("category") or base[src]["status"] for src in ("record", "image")}
    return [f"Lung-RADS {readout['lung_rads']} at baseline: {shown['record']} (record), "
            f"{shown['image']} (image); attenuation from the {readout['attenuation']['source']}",
            f"readout of the {readout['k']} virtual follow-ups: {readout['summary']}",
            readout["notice"]]


def _write_outputs(args: argparse.Namespace, config, pipe, result, crop, baseline: dict,
                   hasher=None) -> None:
    """OUT/prediction.json, samples.npy, grid.png (the first GRID_MAX follow-ups) and
    run_info.json, all or nothing: built in a partial folder that SIGTERM and Ctrl-C delete,
    renamed into place at the end; partial folders of killed earlier runs are deleted first."""
    import numpy as np

    from namd.inference.sample_stage import save_grid
    from namd.run.provenance import atomic_dir, atomic_write_json, recorded_paths, write_run_info

    shown = result.samples[:GRID_MAX]
    which = f"{len(shown)}" if len(shown) == result.k else f"the first {len(shown)} of {result.k}"
    with (recorded_paths(hasher=hasher) as paths,
          terminate_as_exit(), atomic_dir(args.out, overwrite=True, reclaim=True) as tmp):
        atomic_write_json(tmp / "prediction.json", {**result.as_json(), "baseline": baseline})
        np.save(tmp / "samples.npy", result.samples)
        save_grid(tmp / "grid.png", crop, None, shown, tuple(config.data.window_hu),
                  f"virtual follow-ups ({which}), p = {result.p_followup_mean:.2f}")
        write_run_info(tmp, config, config.sampling.seed, stage="predict",
                       run=paths.path(args.run or args.model), seed_from=result.seed_from,
                       model_sha256=pipe.model_hash, method=pipe.method)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit(143) instead of killing the process at once,
    so the `finally` and `except` clauses run (atomic_dir deletes its partial folder), as they
    do for Ctrl-C. Only the main thread may set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
