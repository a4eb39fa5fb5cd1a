"""Shared test settings: quiet progress bars, one torch thread per xdist worker."""

import os

os.environ.setdefault("NAMD_NO_PROGRESS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see namd/__init__.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


# -- a finished tiny run, shared by tests/test_predict.py, test_deidentify.py, test_model.py ----
import pytest  # noqa: E402
from helpers import build_tiny_run  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The finished tiny run, built once per session: tests must not write into it."""
    return build_tiny_run(tmp_path_factory.mktemp("predict") / "run")
