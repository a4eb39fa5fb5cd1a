"""The README's Python API section runs as written, against the tiny finished run (its 16 x 16
crops stand in for the example's 64 x 64 crop; the run and model paths point into tmp)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).parents[1] / "README.md"


def api_block() -> str:
    """The first python code block of the README's "Python API" section."""
    section = README.read_text().split("## Python API")[1].split("\n## ")[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_block_runs(tiny_run, tmp_path, monkeypatch):
    code = api_block()
    assert 'NAMDPipeline.from_run("runs/demo")' in code and "examples/patient.json" in code
    crop_file = tmp_path / "crop.npy"
    np.save(crop_file, np.where(np.hypot(*np.mgrid[-8:8, -8:8]) < 4, 40.0, -800.0).astype(np.float32))
    code = (code.replace('"runs/demo"', repr(str(tiny_run.path)))
            .replace('"examples/crop.npy"', repr(str(crop_file)))
            .replace('"models/namd"', repr(str(tmp_path / "model")))
            .replace("k=20", "k=2"))
    monkeypatch.chdir(Path(__file__).parents[1])  # examples/patient.json is read relative to the repo
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["pred"].samples.shape == (2, 16, 16) and scope["samples"].shape == (1, 4, 16, 16)
    assert (tmp_path / "model" / "model_index.json").is_file()
