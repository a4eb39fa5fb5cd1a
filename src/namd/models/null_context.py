"""Stage 1's null context C (Equation 9), and where it is kept.

"zeros" (CPU presets): zeros of the context encoder's shape (B, m, D), so stage 2 reuses every
weight of stage 1. "empty_prompt" (the authors' code, the paper preset): SD1.5's CLIP text
encoder's embedding of the empty prompt, (1, 77, 768), read from the local SD1.5 folder, so
stage 1 keeps SD1.5's 768-wide cross-attention weights; stage 2 then widens them to the
language model's D (its key/value projections start afresh) and its own null context is the
language model's output for the empty sentence (`ContextEncoder.null_context`).

The prior stage saves the C it trained with (RUN/prior/null_context.safetensors); whatever
runs the prior again (the baseline-use measure) reads it from there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from namd.config import NamdConfig
from namd.config.preflight import clip_folder
from namd.models.token_text import load_clip_text

NULL_FILE = "null_context.safetensors"


def clip_empty_prompt(folder: str | Path) -> Tensor:
    """CLIP's last hidden state of the empty prompt padded to the tokenizer's length, (1, L, D):
    (1, 77, 768) for SD1.5. Local files only, safetensors only."""
    model, tokenizer = load_clip_text(folder, "diffusion.clip_text")
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state.float().contiguous()


def stage_one_context(config: NamdConfig, shape: tuple[int, int]) -> Tensor:
    """The null context stage 1 trains with, as diffusion.null_context says: CLIP's empty
    prompt, or zeros of the context encoder's (m, D) `shape`."""
    if config.diffusion.null_context == "empty_prompt":
        folder = clip_folder(config)
        if folder is None:
            raise ValueError("diffusion.null_context = 'empty_prompt' needs diffusion.clip_text or "
                             "diffusion.unet.pretrained (an SD1.5 folder)")
        return clip_empty_prompt(folder)
    return torch.zeros(1, *shape)


def save_null(context: Tensor, stage_dir: Path) -> None:
    """Write stage 1's null context into its folder (atomically)."""
    from safetensors.torch import save

    from namd.run.provenance import atomic_write_bytes

    atomic_write_bytes(Path(stage_dir) / NULL_FILE, save({"null_context": context.detach().cpu().contiguous()}))


def load_null(stage_dir: Path) -> Tensor | None:
    """Stage 1's saved null context (1, m, D); None for a prior saved before the file existed,
    which trained on zeros of the context encoder's shape."""
    from namd.run.readers import load_safetensors

    path = Path(stage_dir) / NULL_FILE
    if not path.is_file():
        return None
    return load_safetensors(path, "prior")["null_context"]
