"""Overlap scores of binary masks and the Dice + BCE training loss."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional


def dice(prediction: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def iou(prediction: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    union = int(np.logical_or(prediction, truth).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, truth).sum()) / union


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
