"""The thyroid segmenter: build a UNet++ from its config and segment crops with it.

Usage::

    segmenter = load_segmenter(Path("bundle/thyroid"))
    mask = segment_thyroid(segmenter, crop)  # (H, W) bool at the crop's resolution
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch
from numpy.typing import NDArray
from torch import nn

from models.segmentation.config import SegmenterConfig
from models.segmentation.letterbox import prepare


def select_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(config: SegmenterConfig) -> nn.Module:
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


@dataclass(frozen=True)
class Segmenter:
    """A model in eval mode on ``device`` with the config it was built from."""

    model: nn.Module
    config: SegmenterConfig
    device: torch.device

    @classmethod
    def wrap(
        cls, model: nn.Module, config: SegmenterConfig, device: torch.device | None = None
    ) -> Segmenter:
        """Move ``model`` to ``device`` (default :func:`select_device`) in eval mode."""
        target = device or select_device()
        return cls(model=model.to(target).eval(), config=config, device=target)


def predict_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Foreground probabilities (H, W) of each crop at the crop's own resolution."""
    config = segmenter.config
    out: list[NDArray[np.float32]] = []
    for start in range(0, len(crops), batch_size):
        prepared = [prepare(crop, config) for crop in crops[start : start + batch_size]]
        batch = torch.from_numpy(np.stack([x for x, _ in prepared]))[:, None]  # (B, 1, H, W)
        with torch.inference_mode():
            logits = segmenter.model(batch.to(segmenter.device))  # (B, 1, H, W)
            probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()  # (B, H, W)
        out.extend(box.restore(p) for p, (_, box) in zip(probabilities, prepared, strict=True))
    return out


def segment_thyroid_batch(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.bool_]]:
    """Thyroid masks (H, W) of uint8 crops (H, W) or (H, W, 3), each at its crop's size.

    Raises
    ------
    ValueError
        If the segmenter is not a thyroid segmenter or a crop is not a uint8 image.
    """
    if segmenter.config.target != "thyroid":
        raise ValueError(f"this segmenter finds {segmenter.config.target!r}, not the thyroid")
    probabilities = predict_probabilities(segmenter, crops, batch_size)
    return [p > segmenter.config.threshold for p in probabilities]


def segment_thyroid(segmenter: Segmenter, crop: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """The thyroid mask (H, W) of one uint8 crop (H, W) or (H, W, 3), at the crop's size."""
    return segment_thyroid_batch(segmenter, [crop])[0]
