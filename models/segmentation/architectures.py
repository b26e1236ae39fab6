"""What differs between the segmenter architectures: building, training loss, inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from models.segmentation.config import AnyConfig, SegmenterConfig, Target
from models.segmentation.metrics import DiceBCELoss
from models.segmentation.nodule import build_yolo, yolo_loss, yolo_probabilities
from models.segmentation.segmenter import Segmenter
from models.segmentation.thyroid import build_unet, unet_probabilities

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def build_model(config: AnyConfig) -> nn.Module:
    """An untrained network as ``config`` describes it; nothing is downloaded."""
    return build_unet(config) if isinstance(config, SegmenterConfig) else build_yolo(config)


def training_loss(config: AnyConfig) -> Loss:
    """The loss of (model, inputs (B, 1, H, W), masks (B, 1, H, W)) for ``config``'s network."""
    if isinstance(config, SegmenterConfig):
        dice_bce = DiceBCELoss()
        return lambda model, x, y: dice_bce(model(x), y)
    return yolo_loss


def predict_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    if isinstance(segmenter.config, SegmenterConfig):
        return unet_probabilities(segmenter, crops, batch_size)
    return yolo_probabilities(segmenter, crops, batch_size)


def segment(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], target: Target
) -> list[NDArray[np.bool_]]:
    """``target`` masks (H, W) of uint8 crops (H, W) or (H, W, 3), each at its crop's size.

    Raises
    ------
    ValueError
        If the segmenter finds something other than ``target``, or a crop is
        not a uint8 grey or RGB image.
    """
    if segmenter.config.target != target:
        raise ValueError(f"this segmenter finds {segmenter.config.target!r}, not {target!r}")
    probabilities = predict_probabilities(segmenter, crops)
    return [p > segmenter.config.threshold for p in probabilities]
