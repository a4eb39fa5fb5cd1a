"""Tiny randomly initialised language models saved to disk, so the real 'load from a local
directory' path is tested without any download: a decoder-only Llama (the causal/EOS path) and a
BERT encoder (the pooling path), each with a word-level tokenizer trained on report sentences."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from namd.cohort.ehr import CATEGORICAL, CONTINUOUS, EHR, EHR_FIELDS, report_sentence

HIDDEN = 32


def random_ehrs(n: int, seed: int = 0, p_missing: float = 0.2) -> list[EHR]:
    """Valid random records with some missing fields (a fixed seed gives the same list)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values: dict[str, float | int | None] = {}
        for name in EHR_FIELDS:
            if rng.random() < p_missing:
                values[name] = None
            elif name in CATEGORICAL:
                values[name] = rng.choice(sorted(CATEGORICAL[name]))
            else:
                lo, hi = CONTINUOUS[name]
                values[name] = round(rng.uniform(lo, min(hi, 40.0 if "DIA" in name else hi)), 1)
        if values["SCT_LONG_DIA"] is not None and values["SCT_PERP_DIA"] is not None:
            values["SCT_PERP_DIA"] = min(values["SCT_PERP_DIA"], values["SCT_LONG_DIA"])
        out.append(EHR(**values))
    return out


def _tokenizer(specials: dict[str, str]):
    """A word-level fast tokenizer trained on report sentences of random records."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(specials.values()))
    tok.train_from_iterator([report_sentence(e) for e in random_ehrs(300, seed=1, p_missing=0.3)],
                            trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def save_tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama (hidden 32) with <bos>/<eos>/<pad>, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer({"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>",
                      "unk_token": "<unk>"})
    config = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32, dropout on) with [CLS]/[SEP]/[PAD], saved as a folder."""
    from transformers import BertConfig, BertModel

    tok = _tokenizer({"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                      "unk_token": "[UNK]", "mask_token": "[MASK]"})
    config = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.5)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny decoder-only model (built once per test session)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny encoder model (built once per test session)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def ehrs() -> list[EHR]:
    """Six varied records, including a fully missing one (sentences of different lengths)."""
    return [EHR(), *random_ehrs(5, seed=3)]
