"""Segmenters: UNet++ (thyroid) and YOLOv8-seg (nodules), their weights, data, training, metrics."""

from models.segmentation.architectures import build_model, predict_probabilities, segment
from models.segmentation.config import AnyConfig, SegmenterConfig, YoloSegConfig, load_config
from models.segmentation.segmenter import Segmenter, select_device
from models.segmentation.weights import load_segmenter, save_segmenter

__all__ = [
    "AnyConfig",
    "Segmenter",
    "SegmenterConfig",
    "YoloSegConfig",
    "build_model",
    "load_config",
    "load_segmenter",
    "predict_probabilities",
    "save_segmenter",
    "segment",
    "select_device",
]
