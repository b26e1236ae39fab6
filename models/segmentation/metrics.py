"""The Dice + BCE training loss (overlap scores of masks: :mod:`imaging.overlap`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class DiceBCELoss(nn.Module):
    """Binary cross-entropy plus soft Dice loss (per image, then averaged) on logits."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, 1, H, W) against ``target`` (B, 1, H, W) in {0, 1}."""
        bce = functional.binary_cross_entropy_with_logits(logits, target)
        probabilities = torch.sigmoid(logits).flatten(1)  # (B, H*W)
        flat = target.flatten(1)  # (B, H*W)
        overlap = (probabilities * flat).sum(1)  # (B,)
        sizes = probabilities.sum(1) + flat.sum(1)  # (B,)
        soft_dice = (2.0 * overlap + self.smooth) / (sizes + self.smooth)  # (B,)
        return bce + (1.0 - soft_dice).mean()
