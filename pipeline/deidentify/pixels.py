"""Clean Pixel Data: decoding every frame, the image area (regions or detected), writing.

The rules are in :mod:`pipeline.deidentify` (Pixels, Fallback without
regions). Decoding keeps every frame and, for grey images, the original bit
depth, so it does not use :func:`imaging.decode.decode_frames` (8-bit
display values).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space

from imaging.decode import frame_count
from imaging.errors import StageError
from imaging.standard.ultrasound_regions import RegionSpatialFormat

# Fallback image-area detector (images without a Sequence of Ultrasound Regions).
DARK_LEVEL = 12 / 255  # of the full scale: brighter counts as image content
AREA_DENSITY = 0.6  # share of bright pixels a neighbourhood needs to count as image
AREA_MARGIN = 2  # pixels the detected area is shrunk by
MIN_AREA_FRACTION = 0.1  # a smaller detected area makes the image unusable

# Palette descriptions and data, and smallest/largest pixel values (no longer true).
_PALETTE_ELEMENTS = (
    *(0x00281101, 0x00281102, 0x00281103, 0x00281104, 0x00281111, 0x00281112, 0x00281113),
    *(0x00281199, 0x00281201, 0x00281202, 0x00281203, 0x00281204, 0x00281211, 0x00281212),
    *(0x00281213, 0x00281214, 0x00281221, 0x00281222, 0x00281223, 0x00280106, 0x00280107),
)
_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    KeyError,
    AttributeError,
    TypeError,
    IndexError,
    struct.error,
    zlib.error,
    OSError,
)

Pixels = NDArray[np.generic]


@dataclass(frozen=True)
class DecodedPixels:
    """Every frame of an image, RGB or MONOCHROME2, with its bit depth."""

    array: Pixels  # (frames, rows, columns) or (frames, rows, columns, 3)
    photometric_interpretation: Literal["RGB", "MONOCHROME2"]
    bits_stored: int


def decode_pixels(dataset: Dataset, label: str) -> DecodedPixels:
    """Every frame, as RGB or MONOCHROME2.

    Raises
    ------
    StageError
        If the pixel data cannot be decoded or has an unsupported colour model.
    """
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = frame_count(dataset)
    try:
        decoder = get_decoder(dataset.file_meta.TransferSyntaxUID)
        decode_options: dict[str, Any] = {"as_rgb": True}
        array, meta = decoder.as_array(dataset, **decode_options)
        photometric = str(meta["photometric_interpretation"])
        bits_stored = int(meta["bits_stored"])
        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, dataset)
            if array.dtype.itemsize > 1:
                # 16-bit entries; some writers put 8-bit values in them.
                scale = 257 if int(array.max(initial=0)) > 255 else 1
                array = ((array.astype(np.uint32) + scale // 2) // scale).astype(np.uint8)
            photometric, bits_stored = "RGB", 8
        elif photometric.startswith("YBR"):
            array = convert_color_space(array, photometric, "RGB")
            photometric = "RGB"
    except _DECODE_ERRORS as exc:
        raise StageError(f"{label}: pixel data cannot be decoded ({exc})") from exc
    if not array.flags.writeable:
        array = array.copy()
    if photometric == "MONOCHROME1":
        array = (2**bits_stored - 1) - array
        photometric = "MONOCHROME2"
    if photometric not in ("RGB", "MONOCHROME2"):
        raise StageError(f"{label}: photometric interpretation {photometric} is not supported")
    samples = 3 if photometric == "RGB" else 1
    shape = (frames, rows, columns) + ((3,) if samples == 3 else ())
    if array.size != int(np.prod(shape)):
        raise StageError(f"{label}: decoded pixels do not match rows, columns and frames")
    return DecodedPixels(
        array=array.reshape(shape),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        bits_stored=bits_stored,
    )


def region_area(dataset: Dataset, rows: int, columns: int) -> NDArray[np.bool_]:
    """Union of the 2D regions (Region Spatial Format 1); the Max corners are inclusive."""
    area = np.zeros((rows, columns), dtype=bool)
    for region in dataset.SequenceOfUltrasoundRegions:
        if region.get("RegionSpatialFormat") != RegionSpatialFormat.TWO_D:
            continue
        corners = [
            region.get(k)
            for k in (
                "RegionLocationMinX0",
                "RegionLocationMinY0",
                "RegionLocationMaxX1",
                "RegionLocationMaxY1",
            )
        ]
        if any(c is None for c in corners):
            continue
        x0, y0, x1, y1 = (int(c) for c in corners)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, columns - 1), min(y1, rows - 1)
        if x1 >= x0 and y1 >= y0:
            area[y0 : y1 + 1, x0 : x1 + 1] = True
    return area


def detected_area(pixels: DecodedPixels) -> NDArray[np.bool_]:
    """The fallback image area: the largest dense bright area, text strokes opened away."""
    brightest = pixels.array.max(axis=0)  # (rows, columns[, 3])
    if brightest.ndim == 3:
        brightest = brightest.max(axis=2)
    bright = (brightest > DARK_LEVEL * (2**pixels.bits_stored - 1)).astype(np.float32)
    size = min(bright.shape)
    window = max(5, round(size / 40)) | 1
    opening = max(3, round(size / 96)) | 1
    dense = (cv2.blur(bright, (window, window)) >= AREA_DENSITY).astype(np.uint8)
    solid = cv2.morphologyEx(dense, cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if count <= 1:
        return np.zeros(bright.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours(
        (labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    filled = cv2.drawContours(np.zeros_like(solid), contours, -1, 1, thickness=cv2.FILLED)
    shrunk = cv2.erode(filled, np.ones((3, 3), np.uint8), iterations=AREA_MARGIN)
    return np.asarray(shrunk, dtype=bool)


def set_pixels(dataset: Dataset, pixels: DecodedPixels, *, multi_frame: bool) -> None:
    """Write ``pixels`` as native Pixel Data with a matching Image Pixel description."""
    for tag in _PALETTE_ELEMENTS:
        if tag in dataset:
            del dataset[tag]
    array = np.ascontiguousarray(pixels.array)
    frames, rows, columns = array.shape[:3]
    colour = pixels.photometric_interpretation == "RGB"
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.PhotometricInterpretation = pixels.photometric_interpretation
    if colour:
        dataset.PlanarConfiguration = 0
    elif "PlanarConfiguration" in dataset:
        del dataset.PlanarConfiguration
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated = array.dtype.itemsize * 8
    dataset.BitsStored = pixels.bits_stored
    dataset.HighBit = pixels.bits_stored - 1
    dataset.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
    if multi_frame or frames > 1:
        dataset.NumberOfFrames = frames
    dataset.add(DataElement(0x7FE00010, "OB" if array.dtype.itemsize == 1 else "OW", b""))
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    dataset.PixelData = data + (b"\0" if len(data) % 2 else b"")
