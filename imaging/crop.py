"""Cropping: the ultrasound image area, its calibration, and standardised brightness.

Rules
-----
Image area from regions
    When the data set has a Sequence of Ultrasound Regions, only regions with
    Region Spatial Format 1 (2D) and Region Data Type 1 (tissue) count. The
    largest of them is the image area (the first on ties), or with
    ``region_rule="union"`` their bounding union. Region Location Max X1/Y1
    are inclusive in DICOM; :class:`ImageArea` bounds are exclusive and
    clipped to the image. Regions that are all something else (colour flow,
    spectral Doppler, M-mode, traces) are a :class:`~imaging.errors.StageError`:
    there is no B-mode image to analyse.
Calibration
    Physical Units X and Y Direction both 3 (cm) and positive Physical Delta
    X/Y give ``mm_per_pixel = (10 * delta_x, 10 * delta_y)``. Other units, or
    a union of regions whose deltas differ, leave the image uncalibrated
    (``mm_per_pixel`` None): later stages report distances in pixels.
Image area without regions
    :func:`detect_area`: content is grey above :data:`DETECT_DARK` that
    varies (speckle; flat panels do not); a closing with a small square
    (about 1/60 of the shorter side) fills speckle gaps; an opening with a
    large square (1/12 of the shorter side) removes text, rulers, grey and
    colour bars; the bounding box of the largest blob (by the area inside
    its outer contour) then has each edge moved to the first empty row or
    column (:data:`DETECT_EMPTY`) out from its centre, which trims bars
    touching the area and restores sparse far-field rows. Rows that hold no
    signal at all (a far field fading to black) cannot be seen and are left
    out. Such crops are always uncalibrated.
Brightness
    :func:`standardise_brightness`: the 0.5th and 99.5th percentiles of the
    crop's grey levels (BT.601 luma for colour) are mapped linearly to 0 and
    255, clipping outside; colour crops get the same map on every channel.
    Crops are never resized, so the aspect ratio is the source's.
Colour
    A colour crop whose channels differ by at most :data:`GREY_TOLERANCE` in
    at least 99.5 % of pixels (grey B-mode stored as RGB or YBR) goes on as
    grey (H, W); otherwise as RGB (H, W, 3).

The crop stage (:mod:`pipeline.crop`) applies :func:`crop_image` to every
de-identified image of a study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from imaging.decode import FrameRule, Image8, grey, select_frame
from imaging.errors import StageError
from imaging.standard.ultrasound_regions import PhysicalUnits, RegionDataType, RegionSpatialFormat

RegionRule = Literal["largest", "union"]
AreaSource = Literal["regions", "detected"]

# Fallback detector: content is brighter than this grey level and its grey levels vary
# (standard deviation over a DETECT_WINDOW square) by more than DETECT_TEXTURE.
DETECT_DARK = 10
DETECT_TEXTURE = 3.0
DETECT_WINDOW = 15
# Fallback detector: a row or column with less content than this share is empty.
DETECT_EMPTY = 0.005
# Fallback detector: the largest component must cover at least this share of the image.
DETECT_MIN_FRACTION = 0.05
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# Channels of a "grey" colour pixel differ by at most this many levels.
GREY_TOLERANCE = 12
GREY_SHARE = 0.995


@dataclass(frozen=True)
class ImageArea:
    """Where the ultrasound image lies: columns ``x0:x1``, rows ``y0:y1`` (ends exclusive).

    ``mm_per_pixel`` is (x, y) spacing in millimetres, or None when uncalibrated.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    mm_per_pixel: tuple[float, float] | None
    source: AreaSource

    @property
    def width(self) -> int:
        """Columns in the area."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Rows in the area."""
        return self.y1 - self.y0


class Calibration:
    """The calibration of a crop, from the image ``area`` it was cut from."""

    area: ImageArea

    @property
    def mm_per_pixel(self) -> tuple[float, float] | None:
        """(x, y) pixel spacing in mm, or None when distances can only be given in pixels."""
        return self.area.mm_per_pixel

    @property
    def calibrated(self) -> bool:
        """Whether millimetre distances can be measured on this crop."""
        return self.area.mm_per_pixel is not None


@dataclass(frozen=True)
class CroppedImage(Calibration):
    """A standardised crop: uint8 (H, W) grey or (H, W, 3) RGB, never resized."""

    pixels: Image8
    area: ImageArea
    frame_index: int


def _meaning(enumeration: type[RegionSpatialFormat | RegionDataType], value: int) -> str:
    try:
        return enumeration(value).meaning
    except ValueError:
        return f"{enumeration.__name__} {value}"


def _region_label(region: Dataset) -> str:
    spatial = int(region.get("RegionSpatialFormat", 0) or 0)
    data_type = int(region.get("RegionDataType", 0) or 0)
    return f"{_meaning(RegionDataType, data_type)} / {_meaning(RegionSpatialFormat, spatial)}"


def _region_calibration(region: Dataset) -> tuple[float, float] | None:
    units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
    deltas = (region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY"))
    if units != (PhysicalUnits.CM, PhysicalUnits.CM) or None in deltas:
        return None
    dx, dy = float(deltas[0]), float(deltas[1])
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        return None
    return (dx * 10.0, dy * 10.0)


def region_box(region: Dataset, rows: int, columns: int) -> tuple[int, int, int, int]:
    """A region's location as exclusive bounds ``x0, y0, x1, y1`` clipped to the image.

    Raises
    ------
    StageError
        If the location is missing or nothing of the region lies inside the image.
    """
    keys = (
        "RegionLocationMinX0",
        "RegionLocationMinY0",
        "RegionLocationMaxX1",
        "RegionLocationMaxY1",
    )
    missing = [k for k in keys if region.get(k) is None]
    if missing:
        raise StageError(f"ultrasound region lacks {', '.join(missing)}")
    min_x, min_y, max_x, max_y = (int(region.get(k)) for k in keys)
    x0, y0 = max(min_x, 0), max(min_y, 0)
    x1, y1 = min(max_x + 1, columns), min(max_y + 1, rows)
    if x1 <= x0 or y1 <= y0:
        raise StageError(
            f"ultrasound region x {min_x}..{max_x}, y {min_y}..{max_y} has zero size "
            f"inside the {columns}x{rows} image"
        )
    return x0, y0, x1, y1


def region_area(
    ds: Dataset, rows: int, columns: int, rule: RegionRule = "largest"
) -> ImageArea | None:
    """The image area from the Sequence of Ultrasound Regions, or None without one.

    Tissue regions that are empty or lack their location are ignored when
    another one is usable.

    Raises
    ------
    StageError
        If no region is 2D tissue, or none of those has a usable location.
    """
    regions = list(ds.get("SequenceOfUltrasoundRegions") or [])
    if not regions:
        return None
    tissue = [
        r
        for r in regions
        if r.get("RegionSpatialFormat") == RegionSpatialFormat.TWO_D
        and r.get("RegionDataType") == RegionDataType.TISSUE
    ]
    if not tissue:
        found = ", ".join(_region_label(r) for r in regions)
        raise StageError(f"no 2D tissue (B-mode) region among the ultrasound regions: {found}")
    usable: list[Dataset] = []
    boxes: list[tuple[int, int, int, int]] = []
    problems: list[str] = []
    for region in tissue:
        try:
            boxes.append(region_box(region, rows, columns))
        except StageError as exc:
            problems.append(str(exc))
            continue
        usable.append(region)
    if not boxes:
        raise StageError("; ".join(problems))
    tissue = usable
    if rule == "largest":
        areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
        best = areas.index(max(areas))
        return ImageArea(*boxes[best], _region_calibration(tissue[best]), "regions")
    if rule != "union":
        raise StageError(f"unknown region rule {rule!r}; use 'largest' or 'union'")
    calibrations = {_region_calibration(r) for r in tissue}
    first = next(iter(calibrations))
    same = first is not None and all(
        c is not None
        and math.isclose(c[0], first[0], rel_tol=1e-3)
        and math.isclose(c[1], first[1], rel_tol=1e-3)
        for c in calibrations
    )
    return ImageArea(
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
        first if same else None,
        "regions",
    )


def _extent(
    share: NDArray[np.float64], centre: int, low: int, high: int, slack: int
) -> tuple[int, int]:
    """Grow or shrink ``low:high`` to the first empty lines either side of ``centre``.

    A line (row or column) is empty when less than :data:`DETECT_EMPTY` of it is
    content. An edge moves only when an empty line lies within ``slack`` of it
    outside, or anywhere inside; otherwise it stays where the opening put it.
    """
    empty = share < DETECT_EMPTY
    before = np.flatnonzero(empty[:centre])
    after = np.flatnonzero(empty[centre:])
    start = int(before[-1]) + 1 if before.size else 0
    stop = centre + int(after[0]) if after.size else share.size
    return (start if start >= low - slack else low, stop if stop <= high + slack else high)


def content_mask(pixels: Image8) -> NDArray[np.uint8]:
    """1 where the frame is brighter than :data:`DETECT_DARK` and textured, else 0."""
    g = grey(pixels)
    window = (DETECT_WINDOW, DETECT_WINDOW)
    levels = g.astype(np.float32)
    mean = cv2.blur(levels, window)
    variance = cv2.blur(levels * levels, window) - mean * mean
    return ((g > DETECT_DARK) & (variance > DETECT_TEXTURE**2)).astype(np.uint8)


def _squares(rows: int, columns: int) -> tuple[int, int]:
    """Sides of the closing and the opening squares (odd: no half-pixel shift)."""
    short = min(rows, columns)
    return max(3, short // 60) | 1, max(5, short // 12) | 1


def block_mask(content: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """``content`` closed with a small square and opened with a large one (see the module notes).

    What is left are image blocks: text, rulers, grey and colour bars are gone.
    """
    close, opened = _squares(*content.shape)
    mask = cv2.morphologyEx(content, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
    return np.asarray(
        cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((opened, opened), np.uint8)), np.uint8
    )


def detect_area(pixels: Image8) -> ImageArea:
    """Find the B-mode area of an image without ultrasound regions (see the module notes).

    Raises
    ------
    StageError
        If no bright, textured area large enough is found.
    """
    content = content_mask(pixels)
    rows, columns = content.shape
    _, opened = _squares(rows, columns)
    mask = block_mask(content)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise StageError("no ultrasound image area found (no textured area)")
    largest = max(contours, key=cv2.contourArea)
    size = cv2.contourArea(largest)
    x, y, width, height = (int(v) for v in cv2.boundingRect(largest))
    if size < DETECT_MIN_FRACTION * rows * columns:
        raise StageError(
            f"no ultrasound image area found (largest candidate {width}x{height} px "
            f"covers {size / (rows * columns):.1%} of the image)"
        )
    x0, y0, x1, y1 = x, y, x + width, y + height
    # Rows first: text bands above or below would otherwise fill the column counts.
    for _ in range(2):
        y0, y1 = _extent(content[:, x0:x1].mean(axis=1), (y0 + y1) // 2, y0, y1, opened)
        x0, x1 = _extent(content[y0:y1].mean(axis=0), (x0 + x1) // 2, x0, x1, opened)
    return ImageArea(x0, y0, x1, y1, None, "detected")


def image_area(ds: Dataset, pixels: Image8, *, region_rule: RegionRule = "largest") -> ImageArea:
    """The image area: from ultrasound regions when present, else detected in ``pixels``.

    Raises
    ------
    StageError
        As :func:`region_area` and :func:`detect_area`.
    """
    rows, columns = pixels.shape[:2]
    area = region_area(ds, rows, columns, region_rule)
    return area if area is not None else detect_area(pixels)


def _as_grey_if_grey(pixels: Image8) -> Image8:
    if pixels.ndim == 2:
        return pixels
    red, green, blue = cv2.split(pixels)
    spread = cv2.max(
        cv2.max(cv2.absdiff(red, green), cv2.absdiff(green, blue)), cv2.absdiff(red, blue)
    )
    if np.count_nonzero(spread > GREY_TOLERANCE) <= (1.0 - GREY_SHARE) * spread.size:
        return grey(pixels)
    return pixels


def standardise_brightness(
    pixels: Image8, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> Image8:
    """Map the ``low`` and ``high`` percentiles of the grey levels linearly to 0 and 255.

    Raises
    ------
    StageError
        If the percentiles coincide (a flat image has no contrast to standardise).
    """
    levels = grey(pixels)
    cumulative = np.cumsum(np.bincount(levels.ravel(), minlength=256))
    total = int(cumulative[-1])
    lo = int(np.searchsorted(cumulative, low / 100.0 * total, side="right"))
    hi = int(np.searchsorted(cumulative, high / 100.0 * total, side="left"))
    if hi <= lo:
        raise StageError(f"the image area is flat (grey {lo} to {hi}); no contrast to analyse")
    ramp = (np.arange(256, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    table = np.clip(np.rint(ramp), 0, 255).astype(np.uint8)
    return np.asarray(cv2.LUT(pixels, table), dtype=np.uint8)


def crop_image(
    ds: Dataset, *, frame_rule: FrameRule = "middle", region_rule: RegionRule = "largest"
) -> CroppedImage:
    """Decode one frame, crop it to the image area and standardise its brightness.

    Raises
    ------
    StageError
        If the image cannot be decoded or has no usable image area.
    """
    frame = select_frame(ds, frame_rule)
    area = image_area(ds, frame.pixels, region_rule=region_rule)
    window = frame.pixels[area.y0 : area.y1, area.x0 : area.x1]
    pixels = standardise_brightness(_as_grey_if_grey(np.ascontiguousarray(window)))
    return CroppedImage(pixels=pixels, area=area, frame_index=frame.index)
