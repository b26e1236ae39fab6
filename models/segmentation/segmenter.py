"""A segmentation network ready for inference: the model, its config and its device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.segmentation.config import AnyConfig


def select_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Segmenter:
    """A model in eval mode on ``device`` with the config it was built from."""

    model: nn.Module
    config: AnyConfig
    device: torch.device

    @classmethod
    def wrap(
        cls, model: nn.Module, config: AnyConfig, device: torch.device | None = None
    ) -> Segmenter:
        """Move ``model`` to ``device`` (default :func:`select_device`) in eval mode."""
        target = device or select_device()
        return cls(model=model.to(target).eval(), config=config, device=target)
