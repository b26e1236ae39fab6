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


def unet_outputs(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Per crop: foreground probabilities (H, W) at its own resolution and an image embedding.

    The embedding is the mean and standard deviation over positions of each
    channel of the encoder's second-deepest feature map (2 C values): what the
    segmenter made of the whole (letterboxed) crop, for the scope gate.
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
                features = captured[0].float().flatten(2)  # (B, C, positions)
                pooled = torch.cat([features.mean(dim=2), features.std(dim=2)], dim=1)
            embeddings = pooled.cpu().numpy()
            out.extend(
                (box.restore(p), e)
                for p, e, box in zip(probabilities, embeddings, boxes, strict=True)
            )
    finally:
        hook.remove()
    return out


def unet_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    return [probability for probability, _ in unet_outputs(segmenter, crops, batch_size)]
