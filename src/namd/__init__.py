"""namd: Nodule-Aligned Multimodal Diffusion for lung nodule progression prediction.

The package follows the paper's pipeline, one module per stage, data flowing one way
through a run directory: cohort -> vae -> (text context) -> prior -> cond -> samples ->
evaluator / eval -> report.
"""

import os

# OpenMP threads that spin while waiting make torch on a small shared CPU up to ten times slower
# (measured: a VAE step 7.3 s spinning vs 0.8 s passive with another process busy on 2 cores).
# Must be set before torch is first imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562) so that `import namd` and `namd --help` stay
# light: torch loads only when a model does.
_LAZY = {"NAMDPipeline": "namd.inference.pipeline", "EHR": "namd.cohort.ehr", "crop_nodule": "namd.inference.scan"}
__all__ = ["NAMDPipeline", "EHR", "crop_nodule", "__version__"]


def __getattr__(name: str):
    """`namd.NAMDPipeline`, `namd.EHR`, `namd.crop_nodule`: imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'namd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
