"""The UNet++ segmenter (the thyroid): build it from its config and get per-pixel probabilities.

Usage::

    segmenter = load_segmenter(Path("bundle/thyroid"))
    mask = segment_thyroid(segmenter, crop)  # (H, W) bool at the crop's resolution
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import segmentation_models_pytorch as smp
import torch
from numpy.typing import NDArray
from torch import nn

from models.segmentation.config import SegmenterConfig
from models.segmentation.letterbox import prepared_batches
from models.segmentation.segmenter import Segmenter


def build_unet(config: SegmenterConfig) -> nn.Module:
    """An untrained UNet++ as ``config`` describes it; nothing is downloaded."""
    model: nn.Module = smp.UnetPlusPlus(
        encoder_name=config.encoder,
        encoder_depth=config.encoder_depth,
        encoder_weights=None,
        decoder_channels=list(config.decoder_channels),
        in_channels=config.in_channels,
        classes=config.classes,
    )
    return model


def unet_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    config = segmenter.config
    out: list[NDArray[np.float32]] = []
    for batch, boxes in prepared_batches(crops, config, batch_size):  # (B, 1, H, W)
        with torch.inference_mode():
            logits = segmenter.model(batch.to(segmenter.device))  # (B, 1, H, W)
            probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()  # (B, H, W)
        out.extend(box.restore(p) for p, box in zip(probabilities, boxes, strict=True))
    return out
