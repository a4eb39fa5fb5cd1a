"""`namd prepare {nlst,luna,manifest,authors}`: real scans and tables -> a cohort.

Crops are nodule-centred 2D axial slices in HU at the config's crop size and pixel spacing
(data.crop_size, data.pixel_spacing_mm); the rules are in docs/data-sources.md. By default
the first bad record stops the command and nothing is written; with --on-error skip bad
records are left out and listed in OUT/skipped.csv. The cohort appears under OUT only when
it is complete; it holds no DICOM patient tags or UIDs. --hash-ids also hashes the ids you
supplied and the paths of the command line that OUT/run_info.json records (without it, those
paths are written relative to the working folder), and copies no DICOM free text: series are
named by kernel (when it is a known kernel name) and geometry, not by description or number.
$NAMD_HASH_KEY, when set, must be at least 16 bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from namd.cli.options import add_config_args


def _common() -> argparse.ArgumentParser:
    """Options shared by every source."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="cohort directory to write")
    common.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="stop at the first bad record (default, nothing written) or skip "
                             "bad records and list them in OUT/skipped.csv")
    common.add_argument("--hash-ids", action="store_true",
                        help="store keyed hashes of the ids, and of the paths in run_info.json, "
                             "and no DICOM free text (key from $NAMD_HASH_KEY, at least 16 "
                             "bytes, else random)")
    common.add_argument("--workers", type=int, default=None,
                        help="worker processes for crop extraction (0 = in this process; "
                             "default: up to 4)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_config_args(common)
    return common


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd prepare ...`."""
    parser = sub.add_parser("prepare", help="turn real scans and tables into a cohort",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    common = _common()
    nlst = inner.add_parser("nlst", parents=[common], help="NLST tables + DICOM exams (pairs)")
    nlst.add_argument("--prsn", required=True, help="participant table (prsn) CSV")
    nlst.add_argument("--abn", required=True, help="abnormality table (sctabn / ctab) CSV")
    nlst.add_argument("--positions", required=True,
                      help="CSV: pid, study_yr, sct_ab_num, coordX, coordY[, coordZ, seriesuid]")
    nlst.add_argument("--images", required=True, help="root folder of the exams")
    nlst.add_argument("--exams", help="CSV: pid, study_yr, path[, series_uid] (default "
                                      "IMAGES/<pid>/T<study_yr>)")
    nlst.add_argument("--pairs", help="pairing table: pid, base_yr, base_ab_num, follow_yr, "
                                      "follow_ab_num[, label] (default: the matching rule)")
    nlst.add_argument("--label-column", help="0/1 label column of the abnormality table "
                                             "(default: the can_scr/cancyr rule)")
    luna = inner.add_parser("luna", parents=[common], help="LUNA16 / LUNA25 / DLCS (unpaired)")
    luna.add_argument("--annotations", required=True, help="annotation CSV")
    luna.add_argument("--images", required=True, help="root folder of the images")
    manifest = inner.add_parser("manifest", parents=[common], help="generic longitudinal CSV")
    manifest.add_argument("manifest", help="manifest CSV (docs/data-sources.md)")
    manifest.add_argument("--images", help="root of relative image paths (default: the CSV's folder)")
    authors = inner.add_parser("authors", parents=[common], help="the authors' jpg/npy folders")
    authors.add_argument("root", help="folder holding image/ and demo/")
    authors.add_argument("--missing-value", type=float, action="append", default=[],
                         help="a number that means 'missing' in the .npy files (repeatable)")
    for p in (nlst, luna, manifest, authors):
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the source, cut the crops, write the cohort and print what happened."""
    from namd.cli.options import resolve_config
    from namd.cohort.ingest import prepare
    from namd.cohort.ingest.build import IdHasher
    from namd.run.provenance import recorded_paths

    hasher = IdHasher() if args.hash_ids else None  # a weak $NAMD_HASH_KEY stops us here
    config = resolve_config(args)
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    with recorded_paths(hasher=hasher):  # one key for the ids, run_info's paths and skipped.csv
        summary, errors = prepare(args.source, vars(args), config, out=Path(args.out),
                                  on_error=args.on_error, hash_ids=args.hash_ids, workers=workers,
                                  overwrite=args.overwrite, hasher=hasher)
    print(format_summary(Path(args.out), summary))
    if errors.skipped:
        print(f"skipped {len(errors.skipped)} record(s):", file=sys.stderr)
        print("\n".join(errors.lines()), file=sys.stderr)
    return 0


def format_summary(out: Path, s: dict) -> str:
    """Two lines: what was written, and what was left out."""
    flags = ", ".join(f"{k} {v}" for k, v in s["flags"].items()) or "none"
    splits = ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items()))
    lines = [f"cohort {out}: {s['crops']} crops ({s['pairs']} pairs, {s['unpaired']} unpaired) "
             f"from {s['patients']} patients, units {s['units']}; splits: {splits}; flags: {flags}"]
    if s["skipped"]:
        lines.append(f"skipped {s['skipped']} record(s) ({s['skipped_by_category']}); "
                     f"see {out / 'skipped.csv'}")
    return "\n".join(lines)
