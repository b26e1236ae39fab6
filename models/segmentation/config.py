"""Segmenter configurations (architecture, input geometry, normalisation), stored as JSON.

:class:`SegmenterConfig` describes the UNet++ (thyroid), :class:`YoloSegConfig`
the YOLOv8-seg (nodules); :func:`load_config` reads either from a folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Encoder = Literal["mobilenet_v2", "resnet18"]
Target = Literal["thyroid", "nodule"]
YoloScale = Literal["n", "s"]

ENCODERS: tuple[Encoder, ...] = ("mobilenet_v2", "resnet18")
TARGETS: tuple[Target, ...] = ("thyroid", "nodule")
YOLO_SCALES: tuple[YoloScale, ...] = ("n", "s")
# smp encoders downsample five times: input sides must be multiples of 2**5.
STRIDE = 32
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything needed to rebuild a segmenter and feed it a crop.

    Crops are converted to grey (BT.601 luma), letterboxed into
    ``input_height`` x ``input_width`` (resized to fit with the aspect ratio
    kept, padded with black, centred), scaled to [0, 1] and normalised as
    ``(x - norm_mean) / norm_std``. Outputs are un-padded and resized back to
    the crop's own size, then thresholded at ``threshold``.
    """

    target: Target = "thyroid"
    architecture: Literal["UnetPlusPlus"] = "UnetPlusPlus"
    encoder: Encoder = "mobilenet_v2"  # ~70 ms per 256x320 crop on 2 CPU cores
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)  # half smp's default: CPU cost
    in_channels: int = 1  # grey; colour crops are converted to grey
    classes: int = 1  # one foreground logit per pixel
    input_height: int = 256
    input_width: int = 320
    norm_mean: float = 0.5  # on [0, 1] grey levels
    norm_std: float = 0.25
    threshold: float = 0.5  # on the sigmoid probability

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {self.target!r}")
        if self.architecture != "UnetPlusPlus":
            raise ValueError(f"this config describes a UNet++, not {self.architecture!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, not {self.encoder!r}")
        if self.encoder_depth != len(self.decoder_channels):
            raise ValueError("decoder_channels needs one entry per encoder stage")
        if self.in_channels != 1 or self.classes != 1:
            raise ValueError("the segmenter takes one grey channel and gives one logit")
        _check_geometry(self.input_height, self.input_width, self.norm_std, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a field is unknown or missing a valid value.
        """
        values = _known_fields(cls, data)
        if "decoder_channels" in values:
            values["decoder_channels"] = tuple(int(c) for c in values["decoder_channels"])
        return cls(**values)

    def save(self, folder: Path) -> Path:
        """Write ``folder/config.json``."""
        return _save(self.to_dict(), folder)

    @classmethod
    def load(cls, folder: Path) -> SegmenterConfig:
        """Read ``folder/config.json``."""
        return cls.from_dict(_read(folder))


@dataclass(frozen=True)
class YoloSegConfig:
    """An ultralytics YOLOv8-seg instance segmenter built from its yaml (``yolov8<scale>-seg``).

    Input preparation is the UNet++'s (grey, letterboxed, ``(x - norm_mean) /
    norm_std``; YOLO expects [0, 1], hence mean 0 and std 1). Detections with
    a confidence of at least ``confidence`` survive non-maximum suppression
    at ``iou``; each one's mask probability (prototypes times coefficients,
    upsampled to the input and cut to its box) is combined by maximum, mapped
    back to the crop and thresholded at ``threshold``.
    """

    target: Target = "nodule"
    architecture: Literal["YOLOv8-seg"] = "YOLOv8-seg"
    scale: YoloScale = "n"  # yolov8n-seg: 3.3 M parameters
    in_channels: int = 1
    classes: int = 1
    input_height: int = 256
    input_width: int = 320
    norm_mean: float = 0.0
    norm_std: float = 1.0
    confidence: float = 0.25
    iou: float = 0.5  # one class, rarely touching nodules: overlapping boxes are one
    max_detections: int = 10
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {self.target!r}")
        if self.architecture != "YOLOv8-seg":
            raise ValueError(f"this config describes a YOLOv8-seg, not {self.architecture!r}")
        if self.scale not in YOLO_SCALES:
            raise ValueError(f"scale must be one of {YOLO_SCALES}, not {self.scale!r}")
        if self.in_channels != 1 or self.classes != 1:
            raise ValueError("the segmenter takes one grey channel and finds one class")
        _check_geometry(self.input_height, self.input_width, self.norm_std, self.threshold)
        if not (0.0 < self.confidence < 1.0 and 0.0 < self.iou < 1.0):
            raise ValueError("confidence and iou must lie strictly between 0 and 1")
        if self.max_detections < 1:
            raise ValueError("max_detections must be at least 1")

    @property
    def model_yaml(self) -> str:
        """The ultralytics model definition this config builds."""
        return f"yolov8{self.scale}-seg.yaml"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> YoloSegConfig:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a field is unknown or missing a valid value.
        """
        return cls(**_known_fields(cls, data))

    def save(self, folder: Path) -> Path:
        """Write ``folder/config.json``."""
        return _save(self.to_dict(), folder)


AnyConfig = SegmenterConfig | YoloSegConfig


def config_from_dict(data: dict[str, Any]) -> AnyConfig:
    """The config ``data`` describes, chosen by its ``architecture`` (UNet++ when absent).

    Raises
    ------
    ValueError
        If the architecture is unknown or a field is invalid.
    """
    architecture = data.get("architecture", "UnetPlusPlus")
    if architecture == "UnetPlusPlus":
        return SegmenterConfig.from_dict(data)
    if architecture == "YOLOv8-seg":
        return YoloSegConfig.from_dict(data)
    raise ValueError(f"unknown segmenter architecture {architecture!r}")


def load_config(folder: Path) -> AnyConfig:
    """Read ``folder/config.json`` as whichever config it holds."""
    return config_from_dict(_read(folder))


def _check_geometry(height: int, width: int, norm_std: float, threshold: float) -> None:
    for side in (height, width):
        if side < STRIDE or side % STRIDE:
            raise ValueError(f"input sides must be positive multiples of {STRIDE}, not {side}")
    if norm_std <= 0:
        raise ValueError("norm_std must be positive")
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must lie strictly between 0 and 1")


def _known_fields(
    cls: type[SegmenterConfig | YoloSegConfig], data: dict[str, Any]
) -> dict[str, Any]:
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    return dict(data)


def _save(data: dict[str, Any], folder: Path) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _read(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
