"""A plain encoding of the 13 EHR fields (beyond the paper): a drop-in for the LLM encoder.

Each record becomes a fixed feature vector: the three continuous fields standardised
((x - centre) / spread, text.structured.scales) each with a missing indicator, and every
categorical field one-hot over its NLST codes plus a missing indicator (a missing value is all
zeros + indicator 1, never a guessed category). An MLP maps it to C of the same shape as the
language model's, (B, m, D), so the same U-Net can be trained on either and the evaluation can
ask whether the language model helps over the fields themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from namd.cohort.ehr import CATEGORICAL, CONTINUOUS, EHR, EHR_FIELDS
from namd.config.text import TextConfig
from namd.models.context import ContextEncoder
from namd.models.text import model_hidden_size


def feature_names() -> list[str]:
    """Names of the feature vector's entries, in order (e.g. 'age', 'age:missing', 'gender=2')."""
    names: list[str] = []
    for field in EHR_FIELDS:
        if field in CONTINUOUS:
            names.append(field)
        else:
            names.extend(f"{field}={code}" for code in sorted(CATEGORICAL[field]))
        names.append(f"{field}:missing")
    return names


def ehr_features(ehrs: Sequence[EHR], scales: dict[str, tuple[float, float]]) -> Tensor:
    """(B, F) float32 features of `feature_names()` order for the records."""
    unknown = set(CONTINUOUS) - set(scales)
    if unknown:
        raise ValueError(f"text.structured.scales lacks (centre, spread) for {sorted(unknown)}")
    for name in CONTINUOUS:
        if scales[name][1] <= 0:
            raise ValueError(f"text.structured.scales.{name}: spread must be > 0, got {scales[name][1]}")
    rows = []
    for ehr in ehrs:
        row: list[float] = []
        for field in EHR_FIELDS:
            value = getattr(ehr, field)
            if field in CONTINUOUS:
                centre, spread = scales[field]
                row.append(0.0 if value is None else (float(value) - centre) / spread)
            else:
                row.extend(float(value == code) for code in sorted(CATEGORICAL[field]))
            row.append(float(value is None))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(feature_names()))


def context_dim(cfg: TextConfig) -> int:
    """D: text.structured.dim, or the hidden size of text.model (read from its config only)."""
    if cfg.structured.dim is not None:
        return cfg.structured.dim
    return model_hidden_size(cfg.model)


class StructuredEncoder(ContextEncoder):
    """EHR fields -> MLP -> C (B, m, D); every parameter trains.

    `dim` = D (text.structured.dim, default the language model's hidden size, so the U-Net is
    unchanged); `n_tokens` = m = text.n_prompt_sets. Each of the m vectors is layer-normed, as a
    transformer's last hidden state is. Initialised from text.structured.seed alone.
    """

    def __init__(self, cfg: TextConfig) -> None:
        """Build the MLP for `cfg` (sizes from cfg.structured)."""
        super().__init__()
        self.dim = context_dim(cfg)
        self.n_tokens = cfg.n_prompt_sets
        self.scales = {k: (float(v[0]), float(v[1])) for k, v in cfg.structured.scales.items()}
        s = cfg.structured
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            layers: list[nn.Module] = []
            width = len(feature_names())
            for _ in range(s.layers):
                layers += [nn.Linear(width, s.hidden), nn.SiLU()]
                width = s.hidden
            layers.append(nn.Linear(width, self.n_tokens * self.dim))
            self.mlp = nn.Sequential(*layers)
            self.norm = nn.LayerNorm(self.dim)

    def features(self, ehrs: Sequence[EHR]) -> Tensor:
        """(B, F) feature vectors on the encoder's device."""
        return ehr_features(ehrs, self.scales).to(self.device)

    def forward(self, ehrs: Sequence[EHR]) -> Tensor:
        """C (B, m, D) float32 for the records."""
        out = self.mlp(self.features(ehrs))
        return self.norm(out.reshape(len(ehrs), self.n_tokens, self.dim)).float()

    def cache_key(self, ehr: EHR) -> str:
        """The feature vector itself (60 and 60.0 agree): equal features give the same C."""
        return ehr_features([ehr], self.scales)[0].numpy().tobytes().hex()
