"""The UNet++ segmenter (the thyroid): build it from its config and get per-pixel probabilities.

Usage::

    segmenter = load_segmenter(Path("bundle/thyroid"))
    mask = segment_thyroid(segmenter, crop)  # (H, W) bool at the crop's resolution
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import segmentation_models_pytorch as smp
import torch
from numpy.typing import NDArray
from torch import nn

from models.segmentation.config import SegmenterConfig
from models.segmentation.letterbox import Letterbox, prepared_batches
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


def _pooled(features: torch.Tensor, box: Letterbox, input_height: int) -> torch.Tensor:
    """Mean and standard deviation per channel of (C, h, w) ``features`` inside the crop.

    Positions over the letterbox padding are left out, so the crop's aspect ratio
    does not move the embedding.
    """
    scale = features.shape[1] / input_height
    top, left = int(box.top * scale), int(box.left * scale)
    bottom = max(top + 1, math.ceil((box.top + box.height) * scale))
    right = max(left + 1, math.ceil((box.left + box.width) * scale))
    inside = features[:, top:bottom, left:right].flatten(1)  # (C, positions)
    spread = inside.std(dim=1) if inside.shape[1] > 1 else torch.zeros_like(inside[:, 0])
    return torch.cat([inside.mean(dim=1), spread])


def encoder_parts(segmenter: Segmenter) -> tuple[tuple[str, int], ...]:
    """Name and width of each part of :func:`unet_outputs`' embedding, in order."""
    encoder = segmenter.model.get_submodule("encoder")
    channels = list(cast("Sequence[int]", encoder.out_channels))[1:-1]  # [0] is the input
    return tuple((f"encoder{depth}", 2 * c) for depth, c in enumerate(channels, start=1))


def unet_outputs(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Per crop: foreground probabilities (H, W) at its own resolution and an image embedding.

    The embedding is what the segmenter made of the whole crop, for the scope
    gate: for each encoder stage from the shallowest (grain and noise) to the
    one before the deepest (shapes), the mean and standard deviation over the
    crop's positions (not the padding) of each of its channels; the parts are
    :func:`encoder_parts`. The deepest stage is left out: its 1,280 channels
    (MobileNetV2) would need a 2,560-wide covariance, 50 MB in the bundle and
    far wider than the few hundred fitting views can estimate.
    """
    config = segmenter.config
    captured: list[list[torch.Tensor]] = []
    encoder = segmenter.model.get_submodule("encoder")
    hook = encoder.register_forward_hook(lambda _m, _i, features: captured.append(features[1:-1]))
    out: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = []
    try:
        for batch, boxes in prepared_batches(crops, config, batch_size):  # (B, 1, H, W)
            captured.clear()
            with torch.inference_mode():
                logits = segmenter.model(batch.to(segmenter.device))  # (B, 1, H, W)
                probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()  # (B, H, W)
                stages = [f.float() for f in captured[0]]  # each (B, C, h, w)
                pooled = [
                    torch.cat([_pooled(f[k], box, config.input_height) for f in stages])
                    .cpu()
                    .numpy()
                    for k, box in enumerate(boxes)
                ]
            for probability, embedding, box in zip(probabilities, pooled, boxes, strict=True):
                out.append((box.restore(probability), embedding.astype(np.float32)))
    finally:
        hook.remove()
    return out


def unet_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    return [probability for probability, _ in unet_outputs(segmenter, crops, batch_size)]
