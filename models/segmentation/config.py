"""The segmenter's configuration: architecture, input geometry and normalisation, as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Architecture = Literal["UnetPlusPlus"]
Encoder = Literal["mobilenet_v2", "resnet18"]
Target = Literal["thyroid"]

ARCHITECTURES: tuple[Architecture, ...] = ("UnetPlusPlus",)
ENCODERS: tuple[Encoder, ...] = ("mobilenet_v2", "resnet18")
TARGETS: tuple[Target, ...] = ("thyroid",)
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
    architecture: Architecture = "UnetPlusPlus"
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, not {self.encoder!r}")
        if self.encoder_depth != len(self.decoder_channels):
            raise ValueError("decoder_channels needs one entry per encoder stage")
        if self.in_channels != 1 or self.classes != 1:
            raise ValueError("the segmenter takes one grey channel and gives one logit")
        for side in (self.input_height, self.input_width):
            if side < STRIDE or side % STRIDE:
                raise ValueError(f"input sides must be positive multiples of {STRIDE}, not {side}")
        if self.norm_std <= 0:
            raise ValueError("norm_std must be positive")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")

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
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        values = dict(data)
        if "decoder_channels" in values:
            values["decoder_channels"] = tuple(int(c) for c in values["decoder_channels"])
        return cls(**values)

    def save(self, folder: Path) -> Path:
        """Write ``folder/config.json``."""
        path = folder / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> SegmenterConfig:
        """Read ``folder/config.json``."""
        return cls.from_dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
