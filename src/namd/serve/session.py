"""What one `namd serve` process holds, and what the page's buttons do, without gradio.

A `Session` owns the pipeline (loaded once), the run's test nodules (with --run), the uploaded
scans and the download bundles, all under one private temporary folder deleted at exit. A
prediction is `NAMDPipeline.predict` itself, with the key `namd predict` would use: a test
nodule's pair id (so its follow-ups are those of `namd sample` for the same seed, k and steps),
or for a scan the digest of its crop; the numbers the page shows are that call's.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from namd.cohort.ehr import EHR
from namd.inference.scan import crop_volume_flagged
from namd.run.errors import EXPECTED, one_line
from namd.serve.result import Baseline, Result
from namd.serve.upload import Limits, LoadedScan, ScanStore
from namd.serve.views import (
    SLICE_MIN_PX,
    click_to_voxel,
    shown_index,
    slice_view,
    stored_voxel,
    world_of,
    zoom_factor,
)

log = logging.getLogger(__name__)
# what one click may ask of a shared machine: the form's ranges (steps also stay inside the
# model's schedule: 999 of its 1,000 timesteps with DDIM's default spacing), and the estimated
# time of the request (namd.inference.estimate) on this machine
MAX_K, MAX_STEPS = 200, 1000
MAX_SECONDS = 600
KEEP_BUNDLES = 16
Progress = Callable[[float, str], None]


def paper_sampling() -> tuple[int, int]:
    """The paper's k and steps (the `paper` preset: K = 20, DDIM 50): the page's defaults."""
    from namd.config import load_config

    cfg = load_config("paper").sampling
    return cfg.k, cfg.steps


class CohortNodules:
    """The pairs of a run's test split (in `namd sample`'s order), by pair id."""

    def __init__(self, cohort_dir: Path):
        from namd.cohort.store import Cohort
        from namd.inference.sampler import pairs_to_sample

        self.cohort = Cohort(cohort_dir)
        self.pairs = pairs_to_sample(self.cohort, "test").set_index("pair_id", drop=False)

    def choices(self) -> list[tuple[str, str]]:
        """(shown, pair id) per test nodule: the pair id and its label."""
        names = {0: "benign", 1: "malignant"}
        return [(f"{pid} ({names.get(_label(row), 'label unknown')})", str(pid))
                for pid, row in self.pairs.iterrows()]

    def baseline(self, pair_id: str) -> Baseline:
        """A test nodule's baseline crop, real follow-up, label and record."""
        if pair_id not in self.pairs.index:
            raise ValueError(f"no test nodule {pair_id!r} in this run's test split")
        row = self.pairs.loc[pair_id]
        base, follow = self.cohort.images([int(row["baseline_index"]), int(row["followup_index"])])
        return Baseline(base, str(pair_id), {"input": "test nodule of the run"}, follow,
                        _label(row), self.cohort.ehr(row))


def _label(row: Any) -> int | None:
    """A manifest row's label (None when unknown)."""
    import pandas as pd

    value = row["label"]
    return None if pd.isna(value) else int(value)


def _whole(value: Any, name: str, lo: int, hi: int) -> int:
    """A whole number within [lo, hi] from a form value, or a one-line error naming it."""
    if value is None or str(value).strip() == "":
        raise ValueError(f"{name} is empty: give a whole number from {lo} to {hi}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise ValueError(f"{name} = {number:g} must be a whole number from {lo} to {hi}")
    return int(number)


class Session:
    """The pipeline, the test nodules and the uploads of one server."""

    def __init__(self, pipe: Any, limits: Limits | None = None, nodules: CohortNodules | None = None,
                 root: Path | None = None):
        self.pipe, self.nodules = pipe, nodules
        self.limits = limits or Limits()
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="namd-serve-"))
        self.scans = ScanStore(self.root / "scans", self.limits)
        self.default_k, self.default_steps = paper_sampling()
        self.default_seed = int(pipe.config.sampling.seed)
        self.window = tuple(float(v) for v in pipe.config.data.window_hu)
        self._bundles: list[Path] = []
        self._cost: tuple[Any] | None = None  # the model's cost for the estimate, counted once

    # -- scans ------------------------------------------------------------------------------
    def add_scan(self, path: str | Path, name: str | None = None) -> tuple[str, LoadedScan]:
        """Open an uploaded scan (UploadError: the one-line reason)."""
        return self.scans.add(path, name)

    def slice(self, token: str | None, k: int, centre: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Slice k of a scan as shown, the centre marked when it lies on that slice."""
        scan = self.scans.get(token)
        marker = None
        if centre is not None:
            index = shown_index(scan.volume, centre)
            if int(round(index[2])) == int(k):
                marker = (float(index[0]), float(index[1]))
        with scan.lock:
            return slice_view(scan.volume, int(k), self.window, marker)

    def click(self, token: str | None, k: int, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """World point (LPS mm) and stored voxel index of a click at display pixel (x, y)."""
        volume = self.scans.get(token).volume
        factor = zoom_factor(volume.size[:2], SLICE_MIN_PX)
        world = world_of(volume, click_to_voxel(x, y, int(k), factor))
        return world, stored_voxel(volume, world)

    def centre_world(self, token: str | None, centre: Sequence[float], space: str) -> np.ndarray:
        """A typed centre as a world point (voxel = the file's storage order)."""
        volume = self.scans.get(token).volume
        values = np.asarray(_centre_values(centre), float)
        return volume.voxel_to_world(values) if space == "voxel" else values

    def scan_baseline(self, token: str | None, centre: Sequence[Any], space: str) -> Baseline:
        """The model's crop of a scan at a centre, as `namd predict --image --center` cuts it."""
        scan = self.scans.get(token)
        values = _centre_values(centre)
        with scan.lock:
            crop, flags = crop_volume_flagged(scan.volume, values, space, config=self.pipe.config)
        return Baseline(crop, None, {"input": "scan", "center": list(values), "space": space,
                                     "flags": flags})

    def nodule_baseline(self, pair_id: str | None) -> Baseline:
        """A test nodule of the run (with --run only)."""
        if self.nodules is None:
            raise ValueError("test nodules need a run (namd serve --run RUN); upload a scan")
        if not pair_id:
            raise ValueError("no test nodule chosen: pick one")
        return self.nodules.baseline(str(pair_id))

    # -- predictions ------------------------------------------------------------------------
    def sampling(self, k: Any, steps: Any, seed: Any) -> tuple[int, int, int]:
        """k, steps and seed from the form, checked as the page, the config, the model's
        schedule and the time bound (MAX_SECONDS, by the estimate) allow."""
        from namd.config.diffusion import check_sampling_steps

        k, steps = _whole(k, "k", 1, MAX_K), _whole(steps, "steps", 1, MAX_STEPS)
        seed = _whole(seed, "seed", 0, 2 ** 63 - 1)
        cfg = self.pipe.sampling_config(k, steps, seed)  # the config's own checks (ConfigError)
        check_sampling_steps(cfg, self._train_timesteps())
        est = self.estimate(cfg)
        if est.seconds is not None and est.seconds > MAX_SECONDS:
            raise ValueError(f"k = {k} with {steps} steps is too long for this page ({est.line()}; "
                             f"one prediction may take {MAX_SECONDS // 60} min): lower k or steps")
        return k, steps, seed

    def estimate(self, cfg: Any) -> Any:
        """The estimated time, memory and disk of one prediction with sampling config `cfg`."""
        from namd.inference.estimate import Request, estimate, safe_model_cost

        if self._cost is None:
            self._cost = (safe_model_cost(getattr(self.pipe, "files", {})),)
        device = str(getattr(getattr(self.pipe, "sampler", None), "device", "cpu"))
        request = Request(1, cfg.k, cfg.steps, int(self.pipe.config.data.crop_size),
                          cfg.guidance_scale != 1.0, cfg.max_batch, samples_in_memory=True)
        return estimate(request, self._cost[0], device)

    def _train_timesteps(self) -> int:
        """T of the schedule the model's U-Net was trained with."""
        sampler = getattr(self.pipe, "sampler", None)
        return int(getattr(sampler, "train_timesteps", self.pipe.config.diffusion.num_train_timesteps))

    def predict(self, baseline: Baseline, ehr: EHR, k: Any, steps: Any, seed: Any,
                progress: Progress | None = None) -> Result:
        """`NAMDPipeline.predict` for one baseline, the real follow-up scored when known, and
        the download bundle written."""
        from namd.serve.bundle import write_bundle

        report = progress or (lambda fraction, text: None)
        k, steps, seed = self.sampling(k, steps, seed)
        report(0.1, f"drawing {k} virtual follow-ups ({steps} steps each)")
        prediction = self.pipe.predict([baseline.crop], [ehr], k=k, num_inference_steps=steps,
                                       seed=seed, keys=[baseline.key])[0]
        real = None
        if baseline.followup is not None:
            report(0.8, "scoring the real follow-up")
            real = float(self.pipe.probabilities(baseline.followup[None])[0])
        result = Result(prediction, baseline, ehr, real, self.window,
                        float(self.pipe.config.data.pixel_spacing_mm))
        report(0.9, "writing the download")
        folder = Path(tempfile.mkdtemp(dir=self._bundle_root(), prefix="bundle-"))
        result.bundle = write_bundle(folder / "namd-prediction.zip", result)
        self._keep(folder)
        return result

    def _bundle_root(self) -> Path:
        """The folder of the download bundles."""
        path = self.root / "bundles"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _keep(self, folder: Path) -> None:
        """Remember a bundle's folder, deleting the oldest beyond KEEP_BUNDLES."""
        self._bundles.append(folder)
        while len(self._bundles) > KEEP_BUNDLES:
            shutil.rmtree(self._bundles.pop(0), ignore_errors=True)

    def close(self) -> None:
        """Delete the scans, the bundles and the private folder."""
        self.scans.close()
        shutil.rmtree(self.root, ignore_errors=True)


def page_line(exc: BaseException) -> str:
    """An error as the page shows it: the CLI's one line for the errors the CLI expects
    (namd.run.errors.EXPECTED: bad input, a damaged file), a short line for any other, whose
    traceback goes to the server's log instead of the page."""
    if isinstance(exc, EXPECTED):
        return one_line(exc)
    log.error("namd serve: unexpected error", exc_info=exc)
    return (f"unexpected {type(exc).__name__}: {one_line(exc, 300)} (the server's log has the "
            "details)")


def _centre_values(centre: Sequence[Any]) -> tuple[float, float, float]:
    """Three numbers from the centre inputs, or a one-line error naming the empty or
    non-numeric one."""
    if len(centre) != 3:
        raise ValueError(f"the centre needs three numbers (x, y, z), got {len(centre)}")
    values = []
    for axis, value in zip("xyz", centre, strict=True):
        text = "" if value is None else str(value).strip()
        if not text:
            raise ValueError(f"centre {axis} is empty: click on the slice or type x, y and z")
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"centre {axis} = {text!r} is not a number") from None
    return values[0], values[1], values[2]


__all__ = ["CohortNodules", "Session", "page_line", "paper_sampling"]
