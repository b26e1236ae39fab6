"""Fit a crop into the network's input without changing its aspect ratio, and map back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from imaging.decode import grey
from models.segmentation.config import AnyConfig


@dataclass(frozen=True)
class Letterbox:
    """Where a crop of ``crop_height`` x ``crop_width`` lies in the padded input.

    The crop is resized to ``height`` x ``width`` (one scale for both axes)
    and placed with its top-left corner at (``top``, ``left``).
    """

    crop_height: int
    crop_width: int
    height: int
    width: int
    top: int
    left: int

    @classmethod
    def fit(
        cls, crop_height: int, crop_width: int, input_height: int, input_width: int
    ) -> Letterbox:
        """The largest centred placement of the crop that fits the input.

        Raises
        ------
        ValueError
            If a side of the crop is empty.
        """
        if crop_height < 1 or crop_width < 1:
            raise ValueError(f"empty crop {crop_height}x{crop_width}")
        scale = min(input_height / crop_height, input_width / crop_width)
        height = min(input_height, max(1, round(crop_height * scale)))
        width = min(input_width, max(1, round(crop_width * scale)))
        return cls(
            crop_height=crop_height,
            crop_width=crop_width,
            height=height,
            width=width,
            top=(input_height - height) // 2,
            left=(input_width - width) // 2,
        )

    def apply(
        self, image: NDArray[np.uint8], shape: tuple[int, int], *, nearest: bool = False
    ) -> NDArray[np.uint8]:
        """Resize ``image`` (H, W) into a zero-padded array of ``shape``."""
        interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
        resized = cv2.resize(image, (self.width, self.height), interpolation=interpolation)
        out = np.zeros(shape, dtype=np.uint8)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = resized
        return out

    def restore(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        """Un-pad ``values`` (input H, W) and resize it back to the crop's size."""
        inner = values[self.top : self.top + self.height, self.left : self.left + self.width]
        restored = cv2.resize(
            np.ascontiguousarray(inner),
            (self.crop_width, self.crop_height),
            interpolation=cv2.INTER_LINEAR,
        )
        return np.asarray(restored, dtype=np.float32)


def to_grey(crop: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A uint8 crop (H, W) or RGB (H, W, 3) as grey (H, W).

    Raises
    ------
    ValueError
        If the crop is not uint8, not 2-D grey or 3-channel colour, or empty.
    """
    if crop.dtype != np.uint8:
        raise ValueError(f"crops are uint8, not {crop.dtype}")
    if not (crop.ndim == 2 or (crop.ndim == 3 and crop.shape[2] == 3)):
        raise ValueError(f"crops are (H, W) or (H, W, 3), not {crop.shape}")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"empty crop {crop.shape}")
    return grey(np.ascontiguousarray(crop))


def prepare(crop: NDArray[np.uint8], config: AnyConfig) -> tuple[NDArray[np.float32], Letterbox]:
    """A crop as one normalised network input (input H, W) and its placement."""
    image = to_grey(crop)
    box = Letterbox.fit(image.shape[0], image.shape[1], config.input_height, config.input_width)
    padded = box.apply(image, (config.input_height, config.input_width))
    return normalise(padded, config), box


def prepared_batches(
    crops: Sequence[NDArray[np.uint8]], config: AnyConfig, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[Letterbox]]]:
    """Network inputs (B, 1, H, W) of ``batch_size`` crops at a time, with their placements."""
    for start in range(0, len(crops), batch_size):
        prepared = [prepare(crop, config) for crop in crops[start : start + batch_size]]
        batch = torch.from_numpy(np.stack([x for x, _ in prepared]))[:, None]  # (B, 1, H, W)
        yield batch, [box for _, box in prepared]


def normalise(image: NDArray[np.generic], config: AnyConfig) -> NDArray[np.float32]:
    """uint8 grey levels to the network's input scale."""
    scaled = image.astype(np.float32) / 255.0
    return np.asarray((scaled - config.norm_mean) / config.norm_std, dtype=np.float32)
