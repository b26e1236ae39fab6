"""Segmenters: the UNet++ thyroid segmenter, its weights, data, training and metrics."""

from models.segmentation.config import SegmenterConfig
from models.segmentation.thyroid import (
    Segmenter,
    build_model,
    segment_thyroid,
    segment_thyroid_batch,
    select_device,
)
from models.segmentation.weights import load_segmenter, save_segmenter

__all__ = [
    "Segmenter",
    "SegmenterConfig",
    "build_model",
    "load_segmenter",
    "save_segmenter",
    "segment_thyroid",
    "segment_thyroid_batch",
    "select_device",
]
