"""A frozen text encoder's token states of the report sentence: the text path of the compared
latent-diffusion methods (SD1.5: CLIP ViT-L/14's last hidden states, 77 x 768, by
cross-attention; Flux: T5's token states by joint attention and CLIP's pooled vector).

Unlike NAMD's context encoder (namd.models.text: m pooled vectors through soft prompts, trained)
nothing here trains: SD1.5 and Flux fine-tune their denoiser and keep their text encoders frozen.
At CPU size the run's embedded language model (text.model, MiniLM) stands in for CLIP and T5
(docs/compared-methods.md): its last hidden states of the sentence's tokens, [CLS] and [SEP]
included, zero-padded to `length` rows (diffusers' U-Net and Flux transformer take no padding
mask here, and a zero key adds one constant logit, as CLIP's own padding tokens add real ones),
and their mean over the real tokens as the pooled vector. With `clip` set (the paper preset)
the tokens are CLIP's, padded with CLIP's own padding token to its 77 positions as SD1.5
pipelines do, and the pooled vector is CLIP's.

Frozen and deterministic, so each sentence is encoded once and kept (`encode` memoises), and a
training stage pays one pass per distinct record, not one per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from namd.cohort.ehr import EHR, report_sentence
from namd.config.text import TextConfig
from namd.models.context import ContextEncoder

TOKEN_KIND = "tokens"  # context_encoder.json's "kind" of a cond stage that uses this encoder


class FrozenTextEncoder(ContextEncoder):
    """Report sentence -> (token states (B, length, D), pooled (B, D)), frozen; as a
    ContextEncoder its C is the token states (m = length).

    `padded` (a pipeline's own encoder: SD1.5's CLIP, Flux's T5): the sentence padded with the
    tokenizer's pad token to `length` and run without a mask, as the diffusers pipelines do,
    every position's state kept; pooled = the model's pooler output (CLIP), else the mean over
    the real tokens. Otherwise (the run's language model standing in): the real tokens' states,
    zero rows after them, and their mean as the pooled vector."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, length: int, padded: bool) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer, self.length, self.padded = tokenizer, int(length), padded
        self.dim = int(model.config.hidden_size)
        self.n_tokens = self.length
        self._memo: dict[str, tuple[Tensor, Tensor]] = {}
        self.source: str | None = None  # the CLIP folder it was loaded from (None: text.model)

    @classmethod
    def from_config(cls, text: TextConfig, length: int, clip: str | Path | None = None,
                    field: str = "sd15.text = clip") -> FrozenTextEncoder:
        """CLIP's text encoder from a local SD1.5 (or CLIP) folder when `clip` is set (errors
        name `field`, the setting that pointed there), else the run's language model
        (text.model, checked as namd.models.text checks it)."""
        if clip is not None:
            model, tokenizer = load_clip_text(clip, field)
            encoder = cls(model, tokenizer, min(length, tokenizer.model_max_length), True)
            encoder.source = str(clip)
            return encoder
        from namd.models.text import load_language_model, resolve_model_dir

        model, tokenizer, _ = load_language_model(resolve_model_dir(text.model), text.dtype)
        return cls(model, tokenizer, length, False)

    @property
    def device(self) -> torch.device:
        """Where the frozen model's weights live."""
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """The frozen model stays in eval mode (no dropout) whatever mode is asked for."""
        super().train(mode)
        self.model.eval()
        return self

    def cache_key(self, ehr: EHR) -> str:
        """The report sentence: records with the same sentence get the same states."""
        return report_sentence(ehr)

    def forward(self, ehrs: Sequence[EHR]) -> Tensor:
        """C = the token states (B, length, D), float32."""
        return self.encode(ehrs)[0]

    def encode(self, ehrs: Sequence[EHR]) -> tuple[Tensor, Tensor]:
        """(token states (B, length, D), pooled (B, D)), float32 on the model's device."""
        sentences = [report_sentence(e) for e in ehrs]
        new = sorted({s for s in sentences if s not in self._memo})
        if new:
            tokens, pooled = self._run(new)
            self._memo.update({s: (tokens[i], pooled[i]) for i, s in enumerate(new)})
        if not sentences:
            return torch.zeros(0, self.length, self.dim), torch.zeros(0, self.dim)
        return (torch.stack([self._memo[s][0] for s in sentences]),
                torch.stack([self._memo[s][1] for s in sentences]))

    @torch.no_grad()
    def _run(self, sentences: list[str]) -> tuple[Tensor, Tensor]:
        """One pass of the frozen model over `sentences`; a sentence longer than `length`
        tokens is an error (a cut record would silently lose fields)."""
        padding = "max_length" if self.padded else "longest"
        batch = self.tokenizer(sentences, padding=padding, max_length=self.length,
                               truncation=False, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] > self.length:
            worst = int(mask.sum(1).argmax())
            raise ValueError(f"report sentence of {int(mask[worst].sum())} tokens exceeds the text "
                             f"path's {self.length}: {sentences[worst][:80]!r}...")
        out = self.model(input_ids=ids.to(self.device),
                         **({} if self.padded else {"attention_mask": mask.to(self.device)}))
        hidden = out.last_hidden_state.float().cpu()
        weights = mask[..., None].float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        if self.padded:
            pooler = getattr(out, "pooler_output", None)
            return hidden.contiguous(), pooled if pooler is None else pooler.float().cpu()
        states = torch.zeros(len(sentences), self.length, self.dim)
        states[:, :hidden.shape[1]] = hidden * weights
        return states, pooled


def component(folder: Path, name: str) -> Path:
    """An SD1.5 pipeline's component folder, or the folder itself when it is that component."""
    return folder / name if (folder / name).is_dir() else folder


def load_clip_text(folder: str | Path, field: str) -> tuple[torch.nn.Module, Any]:
    """CLIP's text encoder (eval mode) and tokenizer from an SD1.5 folder (text_encoder/,
    tokenizer/) or a CLIP folder; local files only, safetensors only, a one-line error naming
    `field` (the setting that pointed here) otherwise."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{field}: {folder} not found (weights are read only from local paths)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(component(folder, "tokenizer"), local_files_only=True)
        model = CLIPTextModel.from_pretrained(component(folder, "text_encoder"), local_files_only=True,
                                              use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{field}: {folder} holds no CLIP tokenizer and text encoder in tokenizer/ "
                         f"and text_encoder/ (safetensors): {' '.join(str(exc).split())[:200]}") from exc
    return model.eval(), tokenizer


def build_token_encoder(config: Any) -> FrozenTextEncoder:
    """The SD1.5 row's text path as the run's config (a NamdConfig) names it: CLIP from the
    local SD1.5 folder (sd15.text = clip), else the run's language model."""
    clip = None
    if config.sd15.text == "clip":
        from namd.config.preflight import clip_folder

        clip = clip_folder(config)
        if clip is None:
            raise ValueError("sd15.text = clip needs diffusion.clip_text or diffusion.unet.pretrained "
                             "(a local SD1.5 folder with text_encoder/ and tokenizer/)")
    return FrozenTextEncoder.from_config(config.text, config.sd15.length, clip)


def token_spec(encoder: ContextEncoder) -> dict[str, Any]:
    """What context_encoder.json adds for a frozen token encoder (its kind, length and CLIP
    folder), so the sampler builds the same one; {} for NAMD's own encoders."""
    if not isinstance(encoder, FrozenTextEncoder):
        return {}
    return {"kind": TOKEN_KIND, "length": encoder.length, "clip": encoder.source}


def load_token_encoder(spec: dict[str, Any], text: TextConfig) -> FrozenTextEncoder:
    """The frozen token encoder a cond stage's context_encoder.json describes."""
    return FrozenTextEncoder.from_config(text, int(spec["length"]), spec.get("clip"))
