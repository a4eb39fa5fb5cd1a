"""The frozen language model with learnable soft prompts (paper 3.3.1, Equations 7-8).

For each record e the report sentence (namd.cohort.ehr.report_sentence, the only text source) is
tokenised and embedded; for each prompt set j = 1..m the sequence

    c_j = [BOS, s_j1, ..., s_jn, emb(e), EOS]                               (Eq. 7)

goes through the frozen model (the authors' code inserts the prompts after the first/BOS token;
for BERT-style encoders BOS/EOS are [CLS]/[SEP]). The B x m sequences run as one batch. A
decoder-only model gives the last-layer hidden state at the last non-padding position (EOS), the
only position that attends to the whole sequence; encoders pool (`text.pooling`). Stacking the m
vectors gives C = [h_1, ..., h_m] of shape (B, m, D) (Eq. 8). Only the m x n x D prompts train.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from namd.cohort.ehr import EHR, report_sentence
from namd.config.text import TextConfig
from namd.models.context import ContextEncoder
from namd.models.minilm import MINILM_NAME, minilm_dir


def resolve_model_dir(model: str, verify: bool = True) -> Path:
    """The local folder of `text.model`: 'minilm' (embedded) or an existing model directory.

    Never contacts a model hub: anything else is an error that says what to download.
    """
    if model == MINILM_NAME:
        return minilm_dir(verify=verify)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"text.model: {model!r} is not a local directory; download it (huggingface-cli download "
            f"{model} --local-dir DIR) and set text.model=DIR, or use text.model=minilm")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text.model: {folder} has no config.json; point it at a Hugging Face "
                                f"model folder (config.json, tokenizer and weights)")
    return folder


def load_model_config(folder: Path) -> Any:
    """The transformers config of a local model folder (no weights are read)."""
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(folder, local_files_only=True)


def model_hidden_size(model: str) -> int:
    """D of `text.model` from its config alone (the text tower's hidden size for multimodal ones)."""
    config = load_model_config(resolve_model_dir(model, verify=False))
    return int(config.get_text_config().hidden_size)


def is_decoder_only(config: Any) -> bool:
    """True for causal LMs (Gemma 3, Llama, Qwen, GPT-2), False for BERT-style encoders."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"text.model: encoder-decoder models ({config.model_type}) are not supported; "
                         f"use a decoder-only or an encoder model")
    kind = config.get_text_config().model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _load_kwargs(dtype: str) -> dict[str, Any]:
    """from_pretrained arguments for float32, bfloat16 or 4-bit NF4 (CUDA + bitsandbytes only)."""
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype == "float32":
        kwargs["dtype"] = torch.float32
    elif dtype == "bfloat16":
        kwargs["dtype"] = torch.bfloat16
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("text.dtype=nf4 needs a CUDA GPU; use text.dtype=float32 or bfloat16")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError("text.dtype=nf4 needs bitsandbytes: pip install 'namd[nf4]'")
        from transformers import BitsAndBytesConfig
        # As the authors load MedGemma; the compute dtype is not stated there, bfloat16 is usual.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def load_language_model(folder: Path, dtype: str = "float32") -> tuple[nn.Module, Any, Any]:
    """(text model without LM head, tokenizer, config) from a local folder, frozen, eval mode.

    Multimodal wrappers (MedGemma 1.5 = Gemma 3 with a vision tower) give their text tower.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging
    config = load_model_config(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    kwargs = _load_kwargs(dtype)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is checked below instead of printed
    try:
        model, info = AutoModel.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    # A weight absent from the files would be left randomly initialised: refuse (the unused BERT
    # pooler excepted). Unexpected keys (an LM head the base model does not use) are fine.
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise ValueError(f"text.model: {folder} lacks weights for {len(missing)} tensors "
                         f"(e.g. {missing[:3]}); is the download complete?")
    text_model = getattr(model, "language_model", None)
    lm = text_model if isinstance(text_model, nn.Module) else model
    lm.requires_grad_(False)
    lm.eval()
    return lm, tokenizer, config


class LLMContextEncoder(ContextEncoder):
    """Report sentence -> frozen language model with m x n soft prompts -> C (B, m, D).

    `dim` = D, the model's hidden size (2560 for MedGemma 1.5 4B, 384 for MiniLM);
    `n_tokens` = m = text.n_prompt_sets. Trainable: `prompts` (m, n, D), float32.
    The frozen model stays in eval mode (no dropout) whatever `.train()` is called with.
    float32/bfloat16 models load on the CPU (move the encoder with `.to(device)`); with
    text.dtype=nf4 everything is placed on the current CUDA device at load and should stay there.
    Checkpoints hold `trainable_state_dict()` only, never the (frozen, large) language model.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, cfg: TextConfig, decoder: bool) -> None:
        """Wrap a loaded model; `decoder` selects the causal (EOS) path."""
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.max_length = cfg.max_length
        self.padding_side = cfg.padding_side
        self.pooling = ("last" if decoder else "mean") if cfg.pooling == "auto" else cfg.pooling
        if decoder and self.pooling == "cls":
            raise ValueError("text.pooling=cls is meaningless for a decoder-only model (the first "
                             "token sees only itself); use last or mean")
        self.dim = int(lm.get_input_embeddings().weight.shape[1])
        self.n_tokens = cfg.n_prompt_sets
        self.n_prompt_tokens = cfg.n_prompt_tokens
        self.prefix, self.suffix = self._special_tokens()
        self.max_positions = getattr(lm.config, "max_position_embeddings", None)
        self.prompts = nn.Parameter(self._initial_prompts(cfg.prompt_init_text))

    @classmethod
    def from_config(cls, cfg: TextConfig) -> LLMContextEncoder:
        """Load `cfg.model` from its local folder (checking MiniLM's hash) and add soft prompts."""
        folder = resolve_model_dir(cfg.model)
        decoder = {"decoder": True, "encoder": False}.get(cfg.architecture)
        if decoder is None:  # decided from config.json before any weight is read
            decoder = is_decoder_only(load_model_config(folder))
        lm, tokenizer, _ = load_language_model(folder, cfg.dtype)
        return cls(lm, tokenizer, cfg, decoder)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """Ids before the prompts (BOS / [CLS]) and after the sentence (EOS / [SEP])."""
        tok = self.tokenizer
        if self.decoder:
            if tok.eos_token_id is None:
                raise ValueError("text.model: the tokenizer has no EOS token, which Eq. 7 needs")
            first, last = tok.bos_token_id, tok.eos_token_id
        else:
            first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return ([] if first is None else [int(first)]), ([] if last is None else [int(last)])

    def _initial_prompts(self, text: str) -> Tensor:
        """(m, n, D) embeddings of real tokens: set j takes tokens j*n..j*n+n-1 of `text`.

        Starting from real token embeddings keeps the prompts in the region of embedding space the
        model knows (Lester et al., 2021). Special tokens are skipped; if `text` is short, seeded
        random vocabulary tokens fill the rest, so the m sets always differ and can learn apart.
        """
        need = self.n_tokens * self.n_prompt_tokens
        special = set(self.tokenizer.all_special_ids)  # [UNK] included: not a real word
        ids = [i for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]
               if i not in special][:need]
        if len(ids) < need:
            vocab = self.lm.get_input_embeddings().weight.shape[0]
            order = torch.randperm(vocab, generator=torch.Generator().manual_seed(0)).tolist()
            ids += [i for i in order if i not in special and i not in ids][:need - len(ids)]
        weight = self.lm.get_input_embeddings()
        with torch.no_grad():
            emb = weight(torch.tensor(ids, device=weight.weight.device))
        # float32 on the model's device (CUDA already for NF4, whose weights cannot be moved)
        return emb.float().reshape(self.n_tokens, self.n_prompt_tokens, self.dim).clone()

    def train(self, mode: bool = True) -> LLMContextEncoder:
        """Switch modes but keep the frozen language model in eval mode (no dropout)."""
        super().train(mode)
        self.lm.eval()
        return self

    def cache_key(self, ehr: EHR) -> str:
        """The report sentence: records with the same sentence get the same C."""
        return report_sentence(ehr)

    def forward(self, ehrs: Sequence[EHR]) -> Tensor:
        """C (B, m, D) float32 for the records, from their report sentences."""
        return self.encode_text([report_sentence(ehr) for ehr in ehrs])

    def empty_prompt_context(self) -> Tensor:
        """C (1, m, D) of the empty sentence: [BOS, prompts, EOS] (diffusion.null_context =
        empty_prompt, the authors' null conditioning of stage 2)."""
        return self.encode_text([""])

    def token_ids(self, sentences: Sequence[str]) -> list[list[int]]:
        """Sentence token ids without special tokens; a sentence over max_length is an error."""
        ids = self.tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                raise ValueError(f"report sentence {i} has {len(row)} tokens > text.max_length="
                                 f"{self.max_length}: {sentences[i][:80]!r}...")
        return [list(row) for row in ids]

    def _layout(self, ids: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Padded (ids, attention mask, prompt slot index or -1) of [BOS, prompts, sentence, EOS]."""
        n, pad = self.n_prompt_tokens, self.tokenizer.pad_token_id or 0
        rows = [self.prefix + [-1] * n + row + self.suffix for row in ids]
        width = max(len(r) for r in rows)
        if self.max_positions is not None and width > self.max_positions:
            raise ValueError(f"prompted sequence of {width} tokens exceeds the model's "
                             f"{self.max_positions} positions (lower text.max_length or n_prompt_tokens)")
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        slot = torch.full((len(rows), width), -1, dtype=torch.long)
        for b, row in enumerate(rows):
            start = width - len(row) if self.padding_side == "left" else 0
            span = slice(start, start + len(row))
            values = torch.tensor(row)
            tokens[b, span] = values.clamp(min=0).masked_fill(values < 0, pad)
            mask[b, span] = 1
            p0 = start + len(self.prefix)
            slot[b, p0:p0 + n] = torch.arange(n)
        return tokens, mask, slot

    def encode_text(self, sentences: Sequence[str]) -> Tensor:
        """C (B, m, D) float32 for already-built sentences (use `forward` for EHR records)."""
        if len(sentences) == 0:
            return torch.zeros(0, self.n_tokens, self.dim)
        emb_layer = self.lm.get_input_embeddings()
        device = emb_layer.weight.device
        tokens, mask, slot = (t.to(device) for t in self._layout(self.token_ids(sentences)))
        embeds = emb_layer(tokens)                                           # (B, L, D)
        prompts = self.prompts.to(device=device, dtype=embeds.dtype)        # (m, n, D)
        inserted = prompts[:, slot.clamp(min=0)].transpose(0, 1)             # (B, m, L, D)
        is_prompt = (slot >= 0)[:, None, :, None]
        x = torch.where(is_prompt, inserted, embeds[:, None])               # (B, m, L, D)
        batch, m, width = x.shape[0], x.shape[1], x.shape[2]
        x = x.reshape(batch * m, width, self.dim)
        mask = mask.repeat_interleave(m, dim=0)
        # Positions count real tokens only, so left padding leaves every position unchanged.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm(inputs_embeds=x, attention_mask=mask, position_ids=positions,
                         use_cache=False).last_hidden_state
        return self._pool(hidden, mask).float().reshape(batch, m, self.dim)

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """(N, L, D) -> (N, D): last real token (EOS), mean over real tokens, or first real token."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.pooling == "last":
            return hidden[rows, mask.cumsum(-1).argmax(-1)]
        if self.pooling == "cls":
            return hidden[rows, mask.argmax(-1)]
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1)
