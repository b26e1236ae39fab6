"""Overlap scores of binary masks."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


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
