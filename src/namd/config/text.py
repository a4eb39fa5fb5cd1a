"""The EHR context encoder (paper 3.3.1, Equations 7-8)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import Section


class TextConfig(Section):
    """Which frozen language model encodes the report sentence, and its soft prompts."""

    encoder: Literal["llm", "structured"] = "llm"
    model: str = Field("minilm", description="'minilm' (embedded, offline) or a local Hugging Face model directory")
    n_prompt_sets: int = Field(2, ge=1, description="m (authors' code: 2)")
    n_prompt_tokens: int = Field(8, ge=1, description="n (authors' code: 8)")
    pooling: Literal["last", "mean", "cls"] = Field("last", description="decoder-only: last non-pad token; encoders: configurable")
    dtype: Literal["float32", "bfloat16", "nf4"] = "float32"
    max_length: int = Field(128, ge=8)
