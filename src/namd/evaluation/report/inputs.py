"""What the report reads, and how: the inputs of its sections, loaded once and checked.

A stage that has not run is a MissingInput (its section says which command makes it); a file
of a finished stage that is missing, cut short or malformed is a RunFileError (namd.run.contract).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from namd.cohort.store import Cohort
from namd.evaluation.freshness import check_fresh
from namd.evaluation.report import figures as F
from namd.evaluation.report import figures_examples as FX
from namd.evaluation.schema import read_metrics, require_fields
from namd.run.contract import RunFileError, command_for
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO
from namd.run.readers import load_npy, read_csv, read_json


class MissingInput(Exception):
    """An input file or stage that is not there yet; knows which command makes it."""

    def __init__(self, path: Path, stage: str, run: RunDir):
        self.path, self.command = path, command_for(run.path, stage)
        super().__init__(f"{path} not found (made by `{self.command}`)")

    def html(self) -> str:
        """The note a section shows in place of what could not be drawn."""
        return (f'<p class="missing">Missing: <code>{html.escape(str(self.path))}</code>. '
                f"Made by <code>{html.escape(self.command)}</code>.</p>")


@dataclass
class Context:
    """What the section builders share: the run, the config, lazily loaded inputs, outputs."""

    run: RunDir
    config: Any
    images: dict[str, bytes] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def need(self, path: Path, stage: str) -> Path:
        """The path; MissingInput naming the command of `stage` when that stage has not run,
        RunFileError when it finished without it."""
        if not path.exists():
            if self.run.is_done(stage):
                raise RunFileError(path, f"missing, though {stage} finished")
            raise MissingInput(path, stage, self.run)
        return path

    def metrics(self, need: tuple[str, ...] = ()) -> dict[str, Any]:
        """RUN/eval/metrics.json (read once), checked for meaning (namd.evaluation.schema) and
        to be newer than every stage it describes; with the top-level fields `need`."""
        path = self.run.stage("eval") / "metrics.json"
        if "metrics" not in self._cache:
            self._cache["metrics"] = read_metrics(self.need(path, "eval"))
            check_fresh(self.run)
        require_fields(path, self._cache["metrics"], need)
        return self._cache["metrics"]

    def per_nodule(self) -> pd.DataFrame:
        """RUN/eval/per_nodule.csv, checked (read once), and newer than what it describes."""
        if "per_nodule" not in self._cache:
            path = self.need(self.run.stage("eval") / "per_nodule.csv", "eval")
            check_fresh(self.run)
            read_csv(path, "eval")  # whole and parseable; then the table's own checks
            try:
                self._cache["per_nodule"] = F.load_per_nodule(path)
            except ValueError as exc:
                raise RunFileError(path, str(exc).removeprefix(f"{path}: ")) from None
        return self._cache["per_nodule"]

    def samples(self, stage: str) -> tuple[np.ndarray, pd.DataFrame]:
        """samples.npy (memory-mapped) and index.csv of a sample stage, checked: whole, rows in
        the order `namd sample` wrote them, every sample finite."""
        folder = self.need(self.run.stage(stage), stage)
        npy, csv = self.need(folder / "samples.npy", stage), self.need(folder / "index.csv", stage)
        load_npy(npy, stage)
        read_csv(csv, stage)
        try:
            samples, index = FX.load_samples(folder)
        except ValueError as exc:
            path = npy if str(exc).startswith(str(npy)) else csv
            raise RunFileError(path, str(exc).removeprefix(f"{path}: ")) from None
        info_path = folder / RUN_INFO
        info = read_json(info_path, stage) if info_path.is_file() else {}
        from namd.inference.sample_stage import check_pair_order

        check_pair_order(csv, index["pair_id"], info)
        bad = FX.non_finite_count(samples)
        if bad:
            raise RunFileError(npy, f"{bad} samples hold NaN or inf", writer=stage)
        return samples, index

    def metrics_or_none(self) -> dict[str, Any] | None:
        """metrics.json when present (a damaged one is an error, not None)."""
        try:
            return self.metrics()
        except MissingInput:
            return None

    def cohort(self) -> Cohort:
        """RUN/cohort (opened once)."""
        if "cohort" not in self._cache:
            self._cache["cohort"] = Cohort(self.need(self.run.stage("cohort"), "cohort"))
        return self._cache["cohort"]

    def figure(self, name: str, fig, caption: str) -> str:
        """Keep the PNG of a figure and return its embedded HTML."""
        png = F.figure_png(fig)
        self.images[name] = png
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)} <span class=file>({name})</span>"
                "</figcaption></figure>")


def missing_block(name: str) -> str:
    """The note a section shows when metrics.json predates its block."""
    return (f'<p class="missing">metrics.json holds no {name} block (written by an older '
            "<code>namd evaluate</code>; re-run it).</p>")
