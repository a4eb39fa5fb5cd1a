"""The Flux (rectified flow) row of Table 1: a FluxTransformer2DModel fine-tuned on the pairs.

The paper fine-tunes Flux (Labs, 2024) from pretrained weights and says nothing more; what namd
does is in namd.training.flux's docstring and docs/compared-methods.md. The defaults are CPU
sizes (a small transformer trained from scratch: there is no Flux foundation); the `paper`
preset sets FLUX.1's sizes and points at local FLUX.1-schnell, T5 and CLIP folders.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from namd.config.base import Section, TrainConfig


class FluxTransformerConfig(Section):
    """diffusers' FluxTransformer2DModel size (CPU defaults; paper preset = FLUX.1: 19 double- and
    38 single-stream blocks, 24 heads x 128, RoPE axes (16, 56, 56)). The input, output, joint
    attention and pooled widths are not set here: they come from the VAE's latent channels
    (packed 2x2, doubled by the baseline) and the text path's encoders."""

    num_layers: int = Field(1, ge=0, description="double-stream (MM-DiT) blocks")
    num_single_layers: int = Field(2, ge=0, description="single-stream blocks")
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(32, ge=2)
    axes_dims_rope: tuple[int, int, int] = Field(
        (8, 12, 12), description="RoPE dimensions of the (text index, row, column) axes; even, "
                                 "summing to attention_head_dim (FLUX.1: 16, 56, 56)")
    guidance_embeds: bool = Field(
        False, description="FLUX.1-dev's distilled-guidance embedding; False = FLUX.1-schnell's "
                           "layout (Apache-2.0 weights), which namd fine-tunes")

    @model_validator(mode="after")
    def _rope_fits_heads(self) -> FluxTransformerConfig:
        """RoPE rotates pairs of each head's dimensions: the axes must be even and fill a head."""
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {list(self.axes_dims_rope)} must be even and sum to "
                             f"attention_head_dim = {self.attention_head_dim}")
        return self


class FluxConfig(Section):
    """Rectified-flow fine-tuning of Flux with the baseline latent in a widened input embedding
    and the record through the text path (namd.training.flux), and its Euler sampler."""

    transformer: FluxTransformerConfig = FluxTransformerConfig()
    pretrained: str | None = Field(
        None, description="a local FLUX.1-schnell folder (with transformer/) or its transformer "
        "folder, whose weights the stage fine-tunes (paper preset; required there unless "
        "--from-scratch); None = from scratch (CPU presets: there is no Flux foundation)")
    min_transferred: float = Field(
        0.9, ge=0, le=1, description="smallest share of the transformer's parameters that must "
        "load from `pretrained` (else an error): the input and output layers of a VAE with other "
        "channels than Flux's 16 start fresh")
    text_encoder: Literal["shared", "t5_clip"] = Field(
        "shared", description="the record's text path: 'shared' = the run's embedded language "
        "model (text.model, MiniLM) for both the token states and the pooled vector (CPU "
        "presets); 't5_clip' = T5's token states and CLIP's pooled vector from flux.t5 and "
        "flux.clip (paper preset; FLUX.1's encoders)")
    t5: str | None = Field(None, description="local T5 folder (a FLUX.1 folder with "
                                             "text_encoder_2/ and tokenizer_2/, or a T5 encoder "
                                             "folder); needed by text_encoder = t5_clip")
    clip: str | None = Field(None, description="local CLIP text folder (a FLUX.1 folder with "
                                               "text_encoder/ and tokenizer/, or a CLIP text "
                                               "folder); needed by text_encoder = t5_clip")
    text_length: int = Field(
        80, ge=8, description="token states per record (the joint-attention text sequence, "
        "zero-padded): FLUX.1-schnell pads T5 to 256 (paper preset); CPU presets 80, above the "
        "demo cohort's longest report sentence (65 MiniLM tokens); a longer one is an error")
    logit_mean: float = Field(0.0, description="logit-normal timestep density: mean (SD3, diffusers)")
    logit_std: float = Field(1.0, gt=0, description="logit-normal timestep density: std")
    shift: float = Field(
        1.0, gt=0, description="the fixed time shift of training and sampling sigmas, "
        "s' = shift s / (1 + (shift - 1) s) (FLUX.1-schnell's scheduler: 1.0, no dynamic shift)")
    sampling_steps: int = Field(
        8, ge=1, description="Euler steps from noise to the follow-up (paper preset: 28, "
        "diffusers' FluxPipeline default; CPU presets: 8)")
    # CPU: from scratch at lr 1e-3 with a cosine decay, batch 32, sized to the demo's budget
    # (training + sampling <= NAMD's own chain); paper preset: diffusers' Flux Control full
    # fine-tuning (lr 5e-6, constant, 500 warm-up steps) for NAMD's cond schedule
    train: TrainConfig = TrainConfig(lr=1e-3, batch_size=32, max_steps=600, schedule="cosine",
                                     warmup_steps=20, val_every=100, checkpoint_every=200)
