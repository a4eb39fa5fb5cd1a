"""The EHR context encoder (paper 3.3.1, Equations 7-8)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from namd.config.base import Section

# Scaled to NLST: ages 55-74 at entry (centre 62 as in the Brock model, sd ~5); nodules >= 4 mm,
# most under 20 mm (approximate centre and spread, docs/reference-facts.md, sections 1, 2, 5).
_DEFAULT_SCALES = {"age": (62.0, 5.0), "SCT_LONG_DIA": (8.0, 5.0), "SCT_PERP_DIA": (6.0, 4.0)}


class StructuredConfig(Section):
    """The plain-encoding alternative (beyond the paper): an MLP over the 13 EHR fields."""

    hidden: int = Field(256, ge=1, description="width of the MLP's hidden layers")
    layers: int = Field(2, ge=1, description="hidden layers")
    dim: int | None = Field(None, ge=1, description="D; None = the hidden size of text.model, so the U-Net is the same")
    seed: int = Field(0, description="initialisation seed, independent of the global RNG")
    scales: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(_DEFAULT_SCALES),
        description="(centre, spread) that standardise each continuous field")

    @field_validator("scales")
    @classmethod
    def _complete_scales(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """Fields not given keep their default; unknown fields and spreads <= 0 are errors."""
        unknown = sorted(set(value) - set(_DEFAULT_SCALES))
        if unknown:
            raise ValueError(f"unknown fields {unknown}; continuous fields are {sorted(_DEFAULT_SCALES)}")
        bad = sorted(k for k, (_, spread) in value.items() if spread <= 0)
        if bad:
            raise ValueError(f"spread must be > 0 for {bad}")
        return {**_DEFAULT_SCALES, **value}


class TextConfig(Section):
    """Which frozen language model encodes the report sentence, and its soft prompts."""

    encoder: Literal["llm", "structured"] = "llm"
    model: str = Field("minilm", description="'minilm' (embedded, offline) or a local Hugging Face model directory")
    n_prompt_sets: int = Field(
        1, ge=1, description="m, the context vectors per record; the paper does not say, the "
        "authors' code uses 2 (paper preset). CPU presets: 1, which halves the language model's "
        "passes (each set is its own forward and backward) at equal quality: bench validation "
        "mean-prob AUROC 0.768 vs 0.769, mean-of-K MAE / VAE copy 1.01 vs 1.01, cond stage 536 s "
        "vs 876 s (benchmarks/results/context_contribution_path.md)")
    n_prompt_tokens: int = Field(8, ge=1, description="n (authors' code: 8)")
    pooling: Literal["auto", "last", "mean", "cls"] = Field(
        "auto", description="auto = last non-pad token (EOS) for decoder-only models, mean over the "
                            "real tokens for encoders (how all-MiniLM-L6-v2 was trained)")
    architecture: Literal["auto", "decoder", "encoder"] = Field(
        "auto", description="auto = decoder-only when the model type is a causal LM and not a masked LM")
    dtype: Literal["float32", "bfloat16", "nf4"] = "float32"
    max_length: int = Field(128, ge=8, description="most tokens of the report sentence (longer is an error)")
    padding_side: Literal["left", "right"] = Field("right", description="batch padding; results do not depend on it")
    prompt_init_text: str = Field(
        "Predict the one year follow up low dose computed tomography appearance of this lung "
        "nodule from the radiology report of the patient and the nodule",
        description="soft prompts start as the embeddings of these tokens (set j from token j*n on)")
    standardize: bool = Field(
        True, description="beyond the paper: standardise each of the m x D context values with the "
                          "mean and spread of the training records (fitted once, before cond "
                          "training, and saved with the soft prompts). A frozen sentence encoder "
                          "gives nearly the same C for every patient (MiniLM: between-patient std "
                          "0.03 around values of 0.1), which the U-Net's cross-attention then "
                          "ignores; false = the paper's raw hidden states (paper preset)")
    structured: StructuredConfig = StructuredConfig()
