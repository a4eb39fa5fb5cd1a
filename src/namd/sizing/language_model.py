"""The cond stage's frozen language model as `namd check` sizes it: its shape from a local
folder, or MedGemma 1.5 4B's published text config when only the hub name is given, records that
give the longest report sentences, a word-level stand-in tokenizer, and its stored bytes at
text.dtype (float32 4 B, bfloat16 2 B, NF4 0.5 B per Linear weight + a float32 absmax per block
of 64, embeddings and norms in bfloat16 as bitsandbytes leaves them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from namd.config import TextConfig

NF4_BYTES = 0.5 + 4 / 64  # 4-bit code + a float32 absmax per block of 64 (no double quantisation)
# MedGemma 1.5 4B's text tower (Gemma 3 4B) from its published config.json, for a text.model
# that names the hub model rather than a local folder
MEDGEMMA_TEXT = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
                     sliding_window=1024, query_pre_attn_scalar=256, max_position_embeddings=131072)


@dataclass(frozen=True)
class LanguageModelSpec:
    """The cond stage's frozen language model: (text) config, tokenizer, causal or not, and
    where its shape came from."""

    config: Any
    tokenizer: Any
    decoder: bool
    source: str


def probe_records(n: int) -> list:
    """`n` complete EHR records with varied values: every field present gives the longest
    report sentences, so the language model's activations are not under-counted."""
    from namd.cohort.ehr import CATEGORICAL, EHR, EHR_FIELDS

    records = []
    for i in range(n):
        values: dict[str, float | int] = {name: sorted(CATEGORICAL[name])[(i + j) % len(CATEGORICAL[name])]
                                          for j, name in enumerate(EHR_FIELDS) if name in CATEGORICAL}
        values.update(SCT_LONG_DIA=4.0 + (7.3 * i) % 26, age=55.0 + i % 20)
        values["SCT_PERP_DIA"] = round(0.7 * values["SCT_LONG_DIA"], 1)
        records.append(EHR(**values))
    return records


def word_tokenizer(sentences: Sequence[str]) -> Any:
    """A word-level fast tokenizer (<pad>, <bos>, <eos>, <unk>) of `sentences`, digits split one
    by one as Gemma's tokenizer splits them: MedGemma's sequence lengths, roughly, when its
    folder is absent, and the vocabulary of the Gemma-shaped benchmark model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.train_from_iterator(list(sentences), trainer=trainers.WordLevelTrainer(
        special_tokens=list(specials.values())))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def medgemma_text_config(**overrides: Any) -> Any:
    """transformers' Gemma3TextConfig of MedGemma 1.5 4B's text tower (D = 2560, 34 layers),
    with `overrides` (num_hidden_layers=2, vocab_size=... for the small Gemma-shaped model)."""
    from transformers import Gemma3TextConfig

    values = {**MEDGEMMA_TEXT, **overrides}
    # Gemma 3: five sliding-window layers, then a full-attention one
    values.setdefault("layer_types", ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                      for i in range(values["num_hidden_layers"])])
    return Gemma3TextConfig(**values)


def language_model_spec(cfg: TextConfig) -> LanguageModelSpec:
    """The shape of text.model: its local folder's config and tokenizer, or, for a MedGemma hub
    name without a local folder, MEDGEMMA_TEXT with the word-level stand-in tokenizer."""
    from namd.models.text import is_decoder_only, load_model_config, resolve_model_dir

    try:
        folder = resolve_model_dir(cfg.model, verify=False)
    except FileNotFoundError:
        if "medgemma" not in cfg.model.lower():
            raise
        from namd.cohort.ehr import report_sentence

        tok = word_tokenizer([report_sentence(e) for e in probe_records(64)])
        return LanguageModelSpec(medgemma_text_config(), tok, True, f"{cfg.model} is no local folder: "
                                 "MedGemma 1.5 4B's published text config, word-level stand-in tokenizer")
    from transformers import AutoTokenizer

    config = load_model_config(folder)
    decoder = {"decoder": True, "encoder": False}.get(cfg.architecture)
    decoder = is_decoder_only(config) if decoder is None else decoder
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LanguageModelSpec(config.get_text_config(), tok, decoder, f"config and tokenizer of {folder}")


def frozen_lm_bytes(lm: nn.Module, dtype: str) -> int:
    """Bytes of the frozen language model stored at text.dtype (see the module docstring)."""
    n = sum(p.numel() for p in lm.parameters())
    if dtype in ("float32", "bfloat16"):
        return (4 if dtype == "float32" else 2) * n
    linear = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear))
    return int(NF4_BYTES * linear + 2 * (n - linear))
