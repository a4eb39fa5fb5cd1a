"""What checking a run's weight files by sha256 costs at the paper preset's sizes (issue 27).

A finished stage records the sha256 of each weight file it wrote (`RunDir.mark_done`), and every
reader checks a file against that record (`namd.run.readers.check_recorded_sha256`), hashing
it once per process and file state (`file_sha256` caches by path, size and mtime). This writes
temporary files of the sizes the paper preset's networks save (fp32 safetensors: the SD1.5 VAE,
the prior's and the cond stage's U-Nets, the evaluator; counted on the meta device) in a run
laid out as namd lays it out, and times, per file:

- read, cold: reading it whole after asking the kernel to drop it from the page cache
  (posix_fadvise DONTNEED), which any loader pays anyway;
- sha256, cold: the first `file_sha256` with the file dropped from the page cache (a fresh
  process reading weights from disk: `namd predict`, `namd sample`);
- sha256, warm: the first `file_sha256` with the file in the page cache (what `mark_done` pays
  right after the stage wrote it; the hashing itself);
- cached: a later `file_sha256` of the same file state (stat + lookup), and the whole
  `check_recorded_sha256` a reader calls (its stage's run_info.json read, then the cached hash).

    python benchmarks/weight_hash.py --out benchmarks/results/weight_hash

The files (about 8 GB) are written under --dir and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _results import machine, publish, start_load

from namd.run import provenance
from namd.run.contract import DIFFUSERS_WEIGHTS
from namd.run.provenance import RUN_INFO, WEIGHTS_KEY, file_sha256, weights_sha256
from namd.run.readers import check_recorded_sha256

CHUNK = 1 << 26  # 64 MiB of random bytes per write


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's state dict as save_pretrained writes it (its own dtype, fp32)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def paper_files() -> dict[str, int]:
    """Stage-folder path -> bytes of each weight file a paper-preset run writes and inference
    or the next stage reads, from the networks built on the meta device."""
    from namd.config import load_config
    from namd.models.evaluator import build_evaluator
    from namd.models.unet import build_unet
    from namd.models.vae import build_vae, latent_shape
    from namd.sizing import prior_context_shape
    from namd.sizing.language_model import medgemma_text_config

    cfg = load_config("paper")
    c, h, _ = latent_shape(cfg.vae, cfg.data.crop_size)
    width = int(medgemma_text_config().hidden_size)  # the paper's LM (MedGemma): D = 2560
    tokens_width = prior_context_shape(cfg, (cfg.text.n_prompt_sets, width))[1]
    with torch.device("meta"):
        sizes = {
            f"vae/autoencoder/{DIFFUSERS_WEIGHTS}": _bytes(build_vae(cfg.vae)),
            f"prior/unet/{DIFFUSERS_WEIGHTS}": _bytes(build_unet(
                cfg.diffusion.unet, in_channels=c, out_channels=c,
                cross_attention_dim=tokens_width, sample_size=h)),
            f"cond/unet/{DIFFUSERS_WEIGHTS}": _bytes(build_unet(
                cfg.diffusion.unet, in_channels=2 * c, out_channels=c, cross_attention_dim=width,
                sample_size=h, pooled_context=cfg.diffusion.pooled_context)),
            "evaluator/checkpoints/best/vit.safetensors": _bytes(
                build_evaluator(cfg.evaluator, cfg.data.crop_size)),
        }
    return sizes


def write_file(path: Path, size: int, rng: np.random.Generator) -> None:
    """`size` random bytes at `path`, on disk (fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for start in range(0, size, CHUNK):
            fh.write(rng.bytes(min(CHUNK, size - start)))
        fh.flush()
        os.fsync(fh.fileno())


def drop_cache(path: Path) -> None:
    """Ask the kernel to drop a (clean) file's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seconds(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def read_whole(path: Path) -> None:
    """Read a file in 1 MiB blocks, as a loader or the hash does."""
    with path.open("rb") as fh:
        while fh.read(1 << 20):
            pass


def median_us(call: Callable[[], object], repeats: int) -> float:
    """Median microseconds of `repeats` calls."""
    return 1e6 * statistics.median(seconds(call) for _ in range(repeats))


def time_file(path: Path, repeats: int) -> dict[str, float]:
    """The timings of one weight file (see the module docstring), seconds unless _us."""
    drop_cache(path)
    read_cold = seconds(lambda: read_whole(path))
    provenance._cached_sha256.cache_clear()
    drop_cache(path)
    hash_cold = seconds(lambda: file_sha256(path))
    provenance._cached_sha256.cache_clear()
    read_whole(path)  # in the page cache
    hash_warm = seconds(lambda: file_sha256(path))
    return {"read_cold_s": read_cold, "sha256_cold_s": hash_cold, "sha256_warm_s": hash_warm,
            "cached_us": median_us(lambda: file_sha256(path), repeats)}


def run(root: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Write the files of a paper-size run under `root`, record them as mark_done does, time."""
    rng, out = np.random.default_rng(0), {}
    files = paper_files()
    for rel, size in files.items():
        write_file(root / rel, size, rng)
    for stage in {rel.split("/", 1)[0] for rel in files}:
        folder = root / stage
        mine = [root / rel for rel in files if rel.startswith(f"{stage}/")]
        record = {"stage": stage, "complete": True, WEIGHTS_KEY: weights_sha256(folder, mine)}
        (folder / RUN_INFO).write_text(json.dumps(record))
    for rel, size in files.items():
        path = root / rel
        out[rel] = {"mb": size / 1e6, **time_file(path, repeats),
                    "check_us": median_us(lambda p=path: check_recorded_sha256(p), repeats)}
    return out


def markdown(r: dict) -> str:
    """The table of files."""
    lines = ["# sha256 of a run's weight files at the paper preset's sizes", "",
             "`python benchmarks/weight_hash.py`: fp32 files of the sizes the paper preset's "
             "networks save (counted on the meta device), random bytes, in a run laid out as namd "
             "lays it out; `file_sha256` (hashlib, 1 MiB blocks, one thread). Cold = the file "
             "dropped from the page cache first (posix_fadvise DONTNEED); warm = in the page "
             "cache, not yet hashed by the process; cached = the same size and mtime hashed "
             f"before (median of {r['args']['repeats']}).", "",
             "| file | MB | read, cold (s) | sha256, cold (s) | sha256, warm (s) | MB/s warm "
             "| cached file_sha256 (µs) | cached check_recorded_sha256 (µs) |",
             "|---|---|---|---|---|---|---|---|"]
    for rel, t in r["files"].items():
        lines.append(f"| {rel} | {t['mb']:.0f} | {t['read_cold_s']:.2f} | {t['sha256_cold_s']:.2f} "
                     f"| {t['sha256_warm_s']:.2f} | {t['mb'] / t['sha256_warm_s']:.0f} "
                     f"| {t['cached_us']:.1f} | {t['check_us']:.0f} |")
    total = {k: sum(t[k] for t in r["files"].values()) for k in ("sha256_cold_s", "sha256_warm_s")}
    lines += ["", f"All four files: {total['sha256_cold_s']:.1f} s cold, "
              f"{total['sha256_warm_s']:.1f} s warm, once per process and file state. "
              "A stage pays the warm cost of its own files once, in `mark_done` after training "
              "(never in the training loop); `NAMDPipeline.from_run` already hashed every file it "
              "loads (its model_sha256), so its readers' checks find the hashes cached. "
              "A cold read pays the disk once: the hash leaves the file in the page cache for "
              "the loader that follows.",
              "", "The paper preset's evaluator (`evaluator.width` 1024, depth 6, MLP 2048) saves "
              "the size in the table, less than a ViT-B/16 (about 343 MB); the time grows with "
              "the bytes (the MB/s column)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, write, time, delete, publish."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/namd_weight_hash", help="where the temporary run goes")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    root = Path(args.dir) / "run"
    if root.exists():
        raise SystemExit(f"{root} exists: remove it or name another --dir")
    before = start_load()
    try:
        files = run(root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    publish(args.out, {"args": vars(args), "files": files, "machine": machine(before, threads=1)},
            markdown)


if __name__ == "__main__":
    main()
