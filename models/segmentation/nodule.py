"""The YOLOv8-seg nodule segmenter: build it from ultralytics' yaml, train it, get probabilities.

The network sees the same grey letterboxed input as the UNet++. For
training, each connected component of a letterboxed nodule mask is one
instance (class 0) with its box; ultralytics' own YOLOv8 segmentation loss
(box, class, DFL and mask terms) is used. At inference the instances found
are merged into one probability map per crop: ``segment_nodules`` gives one
(H, W) mask whose connected components are the nodules (possibly none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from models.segmentation.config import YoloSegConfig
from models.segmentation.letterbox import prepared_batches
from models.segmentation.segmenter import Segmenter
from models.segmentation.yolo_offline import (
    SegmentationModel,
    crop_mask,
    get_cfg,
    non_max_suppression,
)

# Components smaller than this (letterboxed pixels) are not trained on as nodules.
MIN_INSTANCE_PIXELS = 4


def build_yolo(config: YoloSegConfig) -> nn.Module:
    """An untrained YOLOv8-seg built from ultralytics' bundled yaml; nothing is downloaded."""
    model: Any = SegmentationModel(  # type: ignore[no-untyped-call]
        config.model_yaml, ch=config.in_channels, nc=config.classes, verbose=False
    )
    # The loss reads its gains (box 7.5, cls 0.5, dfl 1.5) from ``args``; one mask per instance.
    model.args = get_cfg(overrides={"overlap_mask": False})
    built: nn.Module = model
    return built


def instance_targets(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ultralytics' training targets from letterboxed masks (B, 1, H, W) in {0, 1}.

    Each 8-connected component of at least :data:`MIN_INSTANCE_PIXELS` is an
    instance: ``batch_idx`` (N,), ``cls`` (N, 1), ``bboxes`` (N, 4; centre x, y,
    width, height as fractions of the input) and ``masks`` (N, H, W).
    """
    height, width = masks.shape[-2:]
    batch_idx: list[int] = []
    boxes: list[list[float]] = []
    instances: list[NDArray[np.bool_]] = []
    for index, mask in enumerate(masks[:, 0].cpu().numpy()):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (mask > 0.5).astype(np.uint8), connectivity=8
        )
        for label in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[label])
            if area < MIN_INSTANCE_PIXELS:
                continue
            batch_idx.append(index)
            boxes.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
            instances.append(labels == label)
    n = len(batch_idx)
    return {
        "batch_idx": torch.tensor(batch_idx, dtype=torch.float32),
        "cls": torch.zeros((n, 1)),
        "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "masks": torch.from_numpy(np.stack(instances)).float()
        if instances
        else torch.zeros((0, height, width)),
    }


def yolo_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ultralytics' YOLOv8-seg loss of inputs ``x`` (B, 1, H, W) and masks ``y`` (B, 1, H, W)."""
    batch: dict[str, Any] = {"img": x, **instance_targets(y)}
    yolo: Any = model
    losses, _ = yolo.loss(batch, yolo(x))  # (5,): box, seg, cls, dfl, semantic; times B
    total: torch.Tensor = losses.sum() / len(x)
    return total


def _merged_maps(
    detections: torch.Tensor, proto: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask probability and detection confidence maps at ``shape`` of detections (N, 6 + 32).

    The probability is the maximum over detections of their box-cut mask
    probabilities; the confidence map holds, where a detection's mask
    probability exceeds 0.5, the highest confidence among those detections.
    """
    if len(detections) == 0:
        empty = torch.zeros(shape, device=proto.device)
        return empty, empty
    channels, mh, mw = proto.shape  # (32, h, w)
    logits = (detections[:, 6:] @ proto.float().view(channels, -1)).view(-1, mh, mw)
    upsampled = functional.interpolate(logits[None], shape, mode="bilinear", align_corners=False)
    probability = crop_mask(torch.sigmoid(upsampled[0]), detections[:, :4])  # (N, H, W)
    confidence = (probability > 0.5) * detections[:, 4, None, None].float()
    return probability.amax(0), confidence.amax(0)


def yolo_outputs(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Per crop at its own resolution: nodule probability and detection confidence maps.

    Both are 0 where nothing was found (see :func:`_merged_maps`).
    """
    config = segmenter.config
    if not isinstance(config, YoloSegConfig):
        raise ValueError("yolo_outputs needs a YOLOv8-seg segmenter")
    shape = (config.input_height, config.input_width)
    out: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = []
    for batch, boxes in prepared_batches(crops, config, batch_size):  # (B, 1, H, W)
        with torch.inference_mode():
            (raw, protos), _ = segmenter.model(batch.to(segmenter.device))
            kept = non_max_suppression(
                raw, config.confidence, config.iou, nc=config.classes,
                max_det=config.max_detections,
            )  # fmt: skip
            maps = [_merged_maps(d, p, shape) for d, p in zip(kept, protos, strict=True)]
        out.extend(
            (box.restore(p.float().cpu().numpy()), box.restore(c.float().cpu().numpy()))
            for (p, c), box in zip(maps, boxes, strict=True)
        )
    return out


def yolo_probabilities(
    segmenter: Segmenter, crops: Sequence[NDArray[np.uint8]], batch_size: int = 16
) -> list[NDArray[np.float32]]:
    """Nodule probabilities (H, W) of each crop at its own resolution; 0 where nothing was found."""
    return [probability for probability, _ in yolo_outputs(segmenter, crops, batch_size)]
