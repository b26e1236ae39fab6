"""PNG files of crops, masks and heatmaps: uint8 grey (H, W) or RGB (H, W, 3)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from imaging.errors import StageError

# Speckle gains nothing from LZ77 matching; Huffman coding alone is as small and faster.
_HUFFMAN_ONLY = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]


def read_png(path: Path, *, grey: bool = False) -> NDArray[np.uint8]:
    """A PNG as uint8 (H, W), or (H, W, 3) RGB for a colour image (unless ``grey``).

    Raises
    ------
    StageError
        If the file cannot be read.
    """
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_UNCHANGED)
    if image is None:
        raise StageError(f"{path.name} cannot be read")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.asarray(image, dtype=np.uint8)


def write_png(path: Path, pixels: NDArray[np.uint8], *, speckle: bool = False) -> Path:
    """Write uint8 grey (H, W) or RGB (H, W, 3) ``pixels``; ``speckle``: fast Huffman-only.

    Raises
    ------
    OSError
        If OpenCV cannot write ``path``.
    """
    image = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    if not cv2.imwrite(str(path), image, _HUFFMAN_ONLY if speckle else []):
        raise OSError(f"could not write {path}")
    return path


def write_mask(path: Path, mask: NDArray[np.bool_]) -> Path:
    """Write a mask as 0 (outside) or 255 (inside).

    Raises
    ------
    OSError
        If OpenCV cannot write ``path``.
    """
    return write_png(path, mask.astype(np.uint8) * 255)
