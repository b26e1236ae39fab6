"""Build a small BERT text encoder (WordPiece tokenizer + BertModel) from report texts, offline.

For sites and tests without a downloadable model in the reports' language:
:func:`build_text_encoder` trains a WordPiece vocabulary on the texts (CJK
characters split one per token, as ``bert-base-chinese`` does), a small
BertModel from scratch with a few masked-language-model steps on them, and
saves both with ``save_pretrained`` into a folder :class:`~models.llnm.text.TextEncoder`
loads (config.json, model.safetensors, tokenizer files). It is a stand-in
with the right tokenisation, not a pretrained language model.
"""

from __future__ import annotations

import os

# Must precede the transformers import: nothing may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track
from tokenizers.implementations.bert_wordpiece import BertWordPieceTokenizer
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class EncoderShape:
    """Vocabulary and model size of a built encoder, and how long it learns."""

    vocab_size: int = 2000
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_positions: int = 512  # covers any TMDL text_tokens budget
    mlm_steps: int = 60
    batch_size: int = 16
    max_length: int = 96  # tokens per text while learning
    learning_rate: float = 1e-3
    mask_share: float = 0.15


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer trained on ``texts`` (CJK split per character)."""
    wordpiece = BertWordPieceTokenizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    wordpiece.train_from_iterator(
        iter(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS)
    )
    return BertTokenizer(
        vocab=wordpiece.get_vocab(),
        do_lower_case=True,
        tokenize_chinese_chars=True,
        strip_accents=False,
    )


def _masked(
    ids: torch.Tensor, mask: torch.Tensor, special: torch.Tensor, tokenizer: BertTokenizer,
    share: float, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Inputs with ``share`` of the real tokens replaced by [MASK], and the labels (-100 else)."""
    chosen = (torch.rand(ids.shape, generator=generator) < share) & mask.bool() & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, int(tokenizer.mask_token_id)), ids)
    return inputs, labels


def build_text_encoder(
    texts: Sequence[str],
    out: Path,
    shape: EncoderShape = EncoderShape(),
    *,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Train a tokenizer and a small BertModel on ``texts`` and save both into ``out``.

    Raises
    ------
    ValueError
        If ``texts`` holds no text.
    """
    given = [t for t in texts if t.strip()]
    if not given:
        raise ValueError("no texts to build a text encoder from")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = build_tokenizer(given, shape.vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.hidden,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    learner = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(learner.parameters(), lr=shape.learning_rate)
    encoded = tokenizer(
        given,
        padding="max_length",
        truncation=True,
        max_length=shape.max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    learner.train()
    for _ in track(range(shape.mlm_steps), description="text encoder", disable=not progress):
        rows = torch.randint(len(given), (shape.batch_size,), generator=generator)
        inputs, labels = _masked(
            encoded["input_ids"][rows],
            encoded["attention_mask"][rows],
            encoded["special_tokens_mask"][rows].bool(),
            tokenizer,
            shape.mask_share,
            generator,
        )
        loss = learner(
            input_ids=inputs, attention_mask=encoded["attention_mask"][rows], labels=labels
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder = BertModel(config)  # the MLM's encoder; the pooler (unused) keeps its init
    encoder.load_state_dict(learner.bert.state_dict(), strict=False)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
