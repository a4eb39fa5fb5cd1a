"""`namd check`'s row for the SD1.5 compared method (RUN/cond_sd15): its U-Net with 8 input
channels and cross-attention on the frozen text encoder's token states.

The token states are computed once per record before training (namd.models.token_text), so a
step holds no text-encoder activations; its frozen weights stay in memory: CLIP ViT-L/14's text
tower (123M, float32) in the paper preset, the run's language model in the CPU presets.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from namd.config import NamdConfig, TrainConfig

CLIP_L14 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "projection_dim": 768, "max_position_embeddings": 77}


def _text_tower(config: NamdConfig) -> nn.Module:
    """The frozen text encoder on meta: CLIP ViT-L/14's text tower, or text.model."""
    if config.sd15.text == "clip":
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.device("meta"):
            return CLIPTextModel(CLIPTextConfig(**CLIP_L14)).eval()
    from transformers import AutoModel

    from namd.sizing.language_model import language_model_spec

    spec = language_model_spec(config.text)
    with torch.device("meta"):
        return AutoModel.from_config(copy.deepcopy(spec.config)).eval()


def sd15_parts(config: NamdConfig, batch: int) -> tuple[list[nn.Module], list[nn.Module], Any, str]:
    """(trainable, frozen, loss, note) of one SD1.5 cond step on meta tensors."""
    from namd.models.schedules import model_output
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape

    tower = _text_tower(config).requires_grad_(False)
    dim = int(tower.config.hidden_size)
    c, h, w = latent_shape(config.vae, config.data.crop_size)
    with torch.device("meta"):
        unet = build_unet(config.diffusion.unet, in_channels=2 * c, out_channels=c,
                          cross_attention_dim=dim, sample_size=h).train()
    n = batch * config.diffusion.cond_draws
    length = min(config.sd15.length, CLIP_L14["max_position_embeddings"]) if config.sd15.text == "clip" \
        else config.sd15.length

    def loss() -> torch.Tensor:
        z = torch.randn(n, c, h, w, device="meta")
        ctx = torch.randn(n, length, dim, device="meta")
        t = torch.zeros(n, dtype=torch.long, device="meta")
        return (model_output(unet, z, t, ctx, baseline=torch.randn_like(z)) - z).pow(2).mean()

    return [unet], [tower], loss, f"token states {length} x {dim} encoded once ({config.sd15.text})"


def stage_train_config(config: NamdConfig) -> TrainConfig:
    """SD1.5's recipe is NAMD's stage 2 (the paper gives none of its own)."""
    return config.diffusion.cond
