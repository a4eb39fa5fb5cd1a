"""The SD1.5 row of Table 1 (paper 4.1.3): what it changes against NAMD's conditional stage.

SD1.5 fine-tunes its U-Net from pretrained weights with the baseline latent concatenated (8
input channels) and the report sentence through its frozen CLIP text encoder by
cross-attention, on the plain VAE (no L_align, no L_pred: RUN/vae_no_align), with SD1.5's own
noise schedule (scaled_linear 0.00085-0.012, epsilon) and DDIM 50. Its schedule, prediction,
sampler and training recipe are NAMD's (diffusion.*, sampling.*, diffusion.cond): the paper
gives none of its own for SD1.5, the paper preset's are SD1.5's, and the CPU presets' U-Net
fine-tunes the shipped foundation, which predicts v, as SD1.5's fine-tuning keeps its
pretrained epsilon parameterisation. docs/compared-methods.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import Section


class SD15Config(Section):
    """The SD1.5 row's text path (CPU default: the run's language model; the paper preset sets
    CLIP)."""

    text: Literal["language_model", "clip"] = Field(
        "language_model", description="the frozen text encoder whose token states feed "
        "cross-attention: SD1.5's CLIP ViT-L/14 from the local SD1.5 folder (diffusion.clip_text, "
        "or the folder holding diffusion.unet.pretrained; paper preset), or the run's language "
        "model text.model (CPU presets: the embedded MiniLM stands in for CLIP, a deviation)")
    length: int = Field(77, ge=8, description="token states per sentence (CLIP's 77); a longer "
                                              "sentence is an error")
