"""The UNet++ segmenter (the thyroid): build it from its config and get per-pixel probabilities.

Usage::

    segmenter = load_segmenter(Path("bundle/thyroid"))
    mask = segment_thyroid(segmenter, crop)  # (H, W) bool at the crop's resolution
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _map_summary(probability: NDArray[np.float32]) -> NDArray[np.float32]:
    """Share of the crop inside the mask, mean probability inside it, share left uncertain."""
    inside = probability > 0.5
    confidence = float(probability[inside].mean()) if inside.any() else 0.0
    uncertain = float(((probability > 0.1) & (probability < 0.9)).mean())
    return np.asarray([inside.mean(), confidence, uncertain], dtype=np.float32)


def unet_outputs(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Per crop: foreground probabilities (H, W) at its own resolution and an image embedding.

    The embedding is what the segmenter made of the whole crop, for the scope
    gate: the mean and standard deviation over the crop's positions (not the
    padding) of each channel of the encoder's second-deepest feature map, then
    three summaries of the probability map (:func:`_map_summary`): 2 C + 3 values.
    """
    config = segmenter.config
    captured: list[torch.Tensor] = []
    encoder = segmenter.model.get_submodule("encoder")
    hook = encoder.register_forward_hook(lambda _m, _i, features: captured.append(features[-2]))
    out: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = []
    try:
        for batch, boxes in prepared_batches(crops, config, batch_size):  # (B, 1, H, W)
            captured.clear()
            with torch.inference_mode():
                logits = segmenter.model(batch.to(segmenter.device))  # (B, 1, H, W)
                probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()  # (B, H, W)
                features = captured[0].float()  # (B, C, h, w)
                pooled = [
                    _pooled(f, box, config.input_height).cpu().numpy()
                    for f, box in zip(features, boxes, strict=True)
                ]
            for probability, embedding, box in zip(probabilities, pooled, boxes, strict=True):
                restored = box.restore(probability)
                summary = _map_summary(restored)
                out.append((restored, np.concatenate([embedding, summary]).astype(np.float32)))
    finally:
        hook.remove()
    return out


def unet_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    return [probability for probability, _ in unet_outputs(segmenter, crops, batch_size)]
