"""The reader of a sample folder (RUN/samples, RUN/samples_<method>) for `namd evaluate`: the
generated crops of the evaluated pairs, in the cohort's order, or why the folder cannot be used.
The folder's format and its writer live in namd.inference.sample_stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from namd.evaluation.freshness import check_samples_newer_than_weights
from namd.inference.sample_stage import INDEX_COLUMNS, check_pair_order
from namd.run.contract import RunFileError
from namd.run.provenance import RUN_INFO
from namd.run.readers import load_npy, read_csv, read_json


def load_samples(folder: Path, pairs: pd.DataFrame, split: str,
                 crop_size: int) -> tuple[np.ndarray | None, str, dict]:
    """Generated crops (N, K, H, W) of a sample folder in the order of `pairs`, or a status.

    A folder that is absent or unfinished is "not run"; one whose files are damaged or
    contradict the cohort is a RunFileError naming the file.
    """
    if not folder.is_dir():
        return None, f"not run: {folder} not found", {}
    info_path = folder / RUN_INFO
    info = read_json(info_path, "samples") if info_path.is_file() else {}
    if not info.get("complete"):
        return None, f"not run: {folder} is unfinished (no complete {RUN_INFO})", {}
    index_path, array_path = folder / "index.csv", folder / "samples.npy"
    index = read_csv(index_path, "samples", dtype={"pair_id": str, "patient_id": str})
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise RunFileError(index_path, f"lacks column(s) {', '.join(missing)}", writer="samples")
    check_pair_order(index_path, index["pair_id"], info)  # rows still describe samples.npy's
    check_samples_newer_than_weights(folder, info, split)
    splits = set(index["split"].astype(str))
    if splits != {split}:
        return None, f"not run: {folder} holds split(s) {sorted(splits)}, not {split!r}", {}
    samples = load_npy(array_path, "samples")
    if samples.ndim != 4 or samples.shape[0] != len(index) or samples.shape[2:] != (crop_size, crop_size):
        raise RunFileError(array_path, f"shape {samples.shape} is not (N={len(index)}, K, "
                           f"{crop_size}, {crop_size})", writer="samples")
    position = {pid: i for i, pid in enumerate(index["pair_id"])}
    absent = [p for p in pairs["pair_id"] if p not in position]
    if absent or len(position) != len(index):
        raise RunFileError(index_path, f"pair ids do not match the cohort's {split} pairs "
                           f"(e.g. missing {absent[:3]}, or duplicates)", writer="samples")
    order = np.array([position[p] for p in pairs["pair_id"]])
    for col in ("baseline_index", "followup_index", "label"):
        ours = pd.to_numeric(index[col], errors="coerce").to_numpy(dtype=float)[order]
        if not np.array_equal(ours, pairs[col].to_numpy(dtype=float)):
            raise RunFileError(index_path, f"column {col} disagrees with the cohort", writer="samples")
    data = np.asarray(samples[order], dtype=np.float32)  # reordered like `pairs`
    if not np.isfinite(data).all():
        raise RunFileError(array_path, "holds non-finite values", writer="samples")
    return data, "ok", info
