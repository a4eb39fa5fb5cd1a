"""Which context encoder a config names, and the files the cond stage saves it in.

The factory lives above `namd.models.context` (the interface), `namd.models.text` and
`namd.models.structured` (the two implementations), so that the interface never imports the
encoders that implement it. The file names are here, not in the training stage, so that
sampling and the NAMDPipeline object can read a cond stage without importing training code.
"""

from __future__ import annotations

from namd.config.text import TextConfig
from namd.models.context import ContextEncoder, StandardizedContext
from namd.models.structured import StructuredEncoder, context_dim
from namd.models.text import LLMContextEncoder, model_hidden_size

PROMPTS_FILE = "context_encoder.safetensors"  # the trained soft prompts (or structured MLP)
ENCODER_FILE = "context_encoder.json"  # the text config, D, m and whether the context is null


def build_context_encoder(cfg: TextConfig, null_mode: str = "zeros") -> ContextEncoder:
    """The encoder that `cfg.encoder` names, 'llm' (paper) or 'structured' (plain fields),
    standardised when `cfg.standardize`, with the null context `null_mode` names
    (diffusion.null_context: 'zeros' or 'empty_prompt')."""
    if null_mode not in ("zeros", "empty_prompt"):
        raise ValueError(f"diffusion.null_context must be 'zeros' or 'empty_prompt', got {null_mode!r}")
    encoder: ContextEncoder
    if cfg.encoder == "structured":
        encoder = StructuredEncoder(cfg)
    else:
        encoder = LLMContextEncoder.from_config(cfg)
    if cfg.standardize:
        encoder = StandardizedContext(encoder)
    encoder.null_mode = null_mode
    return encoder


def context_shape(cfg: TextConfig) -> tuple[int, int]:
    """(m, D) of the encoder `cfg` names, from configs alone: no weights are read (the prior
    stage needs only this shape, not the language model)."""
    if cfg.encoder == "structured":
        return cfg.n_prompt_sets, context_dim(cfg)
    return cfg.n_prompt_sets, model_hidden_size(cfg.model)
