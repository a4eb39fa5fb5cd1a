"""Crop extraction speed of `namd prepare` on a real CT series: crops per second.

    .venv/bin/python benchmarks/bench_prepare.py --series DICOM_FOLDER [--exams 8] \
        [--per-exam 30] [--workers 0 1 2] [--write benchmarks/results/prepare.md]

The series measured (benchmarks/results/prepare.md) is patient Lung_Dx-A0002 of TCIA's
Lung-PET-CT-Dx (30 real 512 x 512 slices, 8 mm; CC BY 4.0; source and citation in
docs/reference-facts.md, section 7), downloaded from TCIA: `--series` is its DICOM folder
(tests/fixtures holds three of its slices, enough to run this script). Each of `--exams` exam
folders links to it (so the DICOM headers are read and the series checked once per exam, as for
separate patients), and each exam gets
`--per-exam` nodule positions spread over its slices. Timed: `prepare("manifest", ...)`
end to end (headers, checks, series choice, slice reads with HU rescale, resampling to the
config's crop geometry, writing the cohort); the best of `--repeats` runs per worker count.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from namd.cohort.ingest import prepare
from namd.config import load_config
from namd.run.provenance import atomic_write_text, package_versions


def make_manifest(root: Path, series: Path, exams: int, per_exam: int, seed: int = 0) -> Path:
    """Exam folders linking to the real series, and `per_exam` positions in each (spread over
    its slices)."""
    rng = np.random.default_rng(seed)
    slices = len([p for p in series.iterdir() if p.is_file()])
    rows = []
    for e in range(exams):
        (root / f"exam{e}").symlink_to(series.resolve(), target_is_directory=True)
        for n in range(per_exam):
            rows.append({"patient_id": f"p{e}", "nodule_id": f"n{n}", "timepoint": 0,
                         "image": f"exam{e}", "space": "voxel", "x": rng.uniform(100, 412),
                         "y": rng.uniform(150, 400), "z": n % slices})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_prepare(manifest: Path, out: Path, workers: int, repeats: int,
                 preset: str) -> tuple[float, float]:
    """Best wall time and best CPU time (s) of a full `prepare` run."""
    config = load_config(preset)
    wall = cpu = float("inf")
    for r in range(repeats):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        prepare("manifest", {"manifest": manifest}, config, out / f"w{workers}-{r}", workers=workers)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _cpu_seconds() - start_cpu)
    return wall, cpu


def describe_machine() -> str:
    """CPU model and count, OS, Python and package versions (the load is `_results.machine`)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    v = package_versions()
    return (f"{cpu}, {os.cpu_count()} logical CPUs; {platform.platform()}; Python {v['python']}; "
            f"SimpleITK {_version('SimpleITK')}, pydicom {_version('pydicom')}")


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, required=True,
                        help="a DICOM series folder (the measured one: TCIA Lung-PET-CT-Dx, "
                             "Lung_Dx-A0002, 30 slices)")
    parser.add_argument("--exams", type=int, default=8)
    parser.add_argument("--per-exam", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--write", type=Path, default=None, help="markdown file for the results")
    args = parser.parse_args()
    if not args.series.is_dir():
        raise SystemExit(f"--series {args.series}: not a folder of DICOM files")
    os.environ.setdefault("NAMD_NO_PROGRESS", "1")
    # Here, not at the top: spawned workers re-import this module, and _results imports torch,
    # whose start-up would be counted in the workers' wall time.
    from _results import load_line, machine, start_load

    before = start_load()

    config = load_config(args.preset)
    n = args.exams * args.per_exam
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_manifest(Path(tmp), args.series, args.exams, args.per_exam)
        for w in args.workers:
            load = os.getloadavg()[0]
            seconds, cpu = time_prepare(manifest, Path(tmp), w, args.repeats, args.preset)
            rows.append((w, seconds, n / seconds, cpu, load))
            print(f"workers {w}: {n} crops in {seconds:.2f} s = {n / seconds:.1f} crops/s "
                  f"(CPU {cpu:.2f} s, load {load:.1f})", flush=True)
    mach = machine(before)
    table = "\n".join(f"| {w} | {n} | {s:.2f} | {r:.1f} | {c:.2f} | {n / c:.1f} | {ld:.1f} |"
                      for w, s, r, c, ld in rows)
    text = f"""# `namd prepare` crop extraction speed

Series: Lung-PET-CT-Dx Lung_Dx-A0002, 30 axial DICOM slices 512 x 512, 0.646 mm pixels, 8 mm
slices (TCIA, CC BY 4.0). {args.exams} exam folders (links to the series) x {args.per_exam}
nodule positions = {n} crops of {config.data.crop_size} x {config.data.crop_size} at
{config.data.pixel_spacing_mm} mm (preset `{args.preset}`), written as a cohort. Best of
{args.repeats} runs; times include reading DICOM headers, the series checks and choice,
reading each needed slice with HU rescale, resampling and writing the cohort. Worker
processes are started with `spawn` (about 1-3 s each to import; part of the wall time).
"crops / CPU s" does not depend on how busy the machine was; wall times do (load average
shown: the machine is shared).

| workers | crops | wall s | crops / wall s | CPU s (all processes) | crops / CPU s | load avg before |
|---|---|---|---|---|---|---|
{table}

Worker processes pay off only with idle cores: when the load average exceeds the number of
CPUs, they add their start-up cost and share the same cores.

Machine: {describe_machine()}.
{load_line(mach)}
Command: `.venv/bin/python benchmarks/bench_prepare.py --series {args.series} --exams {args.exams} --per-exam {args.per_exam} --workers {' '.join(map(str, args.workers))} --repeats {args.repeats} --preset {args.preset} --write {args.write}`
"""
    print(text)
    if args.write:
        atomic_write_text(args.write, text)


if __name__ == "__main__":
    main()
