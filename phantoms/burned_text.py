"""The screen around the B-mode image: layout, burned-in text, gray bar and depth ticks.

Like a scanner's screen capture, the frame has a header band above the image
area (patient name, ID, birth date, hospital, exam date and time), a side
panel left of it (view, probe, frequency, gain, depth) and a gray bar with
depth marks to its right. All of it lies outside the image area, so a crop
to the area (the Sequence of Ultrasound Regions) removes every burned-in
identifier. Text is drawn with OpenCV's built-in Hershey font.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

Box = tuple[int, int, int, int]
Color = tuple[int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE: Color = (235, 235, 235)
YELLOW: Color = (240, 220, 90)  # RGB


@dataclass(frozen=True)
class Layout:
    """Where the image area sits in a frame of ``rows`` x ``columns``."""

    rows: int
    columns: int
    image_area: Box  # x0, y0, x1, y1 (exclusive)

    @classmethod
    def for_frame(cls, rows: int, columns: int) -> Layout:
        """Header band ~10 % of the height, side panel ~14 % of the width.

        Raises
        ------
        ValueError
            If the frame is too small for a header band, a panel and an image.
        """
        if rows < 120 or columns < 160:
            raise ValueError(f"frame {columns}x{rows} is too small (minimum 160x120)")
        band = max(24, round(rows * 0.1))
        bottom = max(4, round(rows * 0.025))
        left = max(40, round(columns * 0.14))
        right = max(16, round(columns * 0.06))
        return cls(
            rows=rows, columns=columns, image_area=(left, band, columns - right, rows - bottom)
        )

    @property
    def area_shape(self) -> tuple[int, int]:
        """(height, width) of the image area in pixels."""
        x0, y0, x1, y1 = self.image_area
        return y1 - y0, x1 - x0


@dataclass(frozen=True)
class Annotation:
    """One burned-in string and where it goes (``x`` left edge, ``y`` baseline)."""

    text: str
    x: int
    y: int
    scale: float
    color: Color


def _width(text: str, scale: float) -> int:
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    return int(w)


def _fit(texts: list[str], width: int, scale: float) -> float:
    """The largest scale <= ``scale`` at which the texts side by side fit ``width``."""
    while scale > 0.25 and sum(_width(t, scale) for t in texts) + 12 * len(texts) > width:
        scale *= 0.9
    return scale


def header_annotations(
    layout: Layout, left: tuple[str, str], right: tuple[str, str], panel: tuple[str, ...]
) -> list[Annotation]:
    """Two header lines (left- and right-aligned) and the side panel's lines."""
    x0, y0, _, y1 = layout.image_area
    base = (y0 * 0.3) / 22.0  # Hershey simplex glyphs are ~22 px tall at scale 1
    out: list[Annotation] = []
    for line, (lt, rt) in enumerate(zip(left, right, strict=True)):
        scale = _fit([lt, rt], layout.columns, base)
        y = round(y0 * (0.42 + 0.42 * line))
        out.append(Annotation(lt, 6, y, scale, WHITE))
        out.append(Annotation(rt, layout.columns - 6 - _width(rt, scale), y, scale, WHITE))
    step = max(12, round((y1 - y0) / 14))
    scale = min(_fit([max(panel, key=len)], x0 - 4, base * 0.85), step / 26.0)
    for i, text in enumerate(panel):
        out.append(Annotation(text, 4, y0 + step * (i + 1), scale, YELLOW))
    return out


def draw_annotations(
    frame: NDArray[np.uint8], layout: Layout, annotations: list[Annotation]
) -> tuple[Box, ...]:
    """Burn the annotations into ``frame`` (rows, columns, 3) and return their boxes.

    A box is the tight bounding box (x1, y1 exclusive) of the glyph pixels
    drawn; glyph pixels that would fall inside the image area are not drawn.
    """
    x0, y0, x1, y1 = layout.image_area
    boxes: list[Box] = []
    for a in annotations:
        (w, h), baseline = cv2.getTextSize(a.text, _FONT, a.scale, 1)
        top = max(a.y - h - 2, 0)
        bottom = min(a.y + baseline + 2, layout.rows)
        left, right = max(a.x - 2, 0), min(a.x + w + 2, layout.columns)
        scratch = np.zeros((bottom - top, right - left), dtype=np.uint8)
        cv2.putText(scratch, a.text, (a.x - left, a.y - top), _FONT, a.scale, 255, 1, cv2.LINE_AA)
        # Never draw into the image area.
        ix0, iy0 = max(x0 - left, 0), max(y0 - top, 0)
        ix1, iy1 = min(x1 - left, scratch.shape[1]), min(y1 - top, scratch.shape[0])
        if ix0 < ix1 and iy0 < iy1:
            scratch[iy0:iy1, ix0:ix1] = 0
        ys, xs = np.nonzero(scratch > 96)
        if ys.size == 0:
            continue
        alpha = scratch.astype(np.float32)[:, :, None] / 255.0
        region = frame[top:bottom, left:right].astype(np.float32)
        color = np.asarray(a.color, dtype=np.float32)
        frame[top:bottom, left:right] = (region * (1 - alpha) + color * alpha).astype(np.uint8)
        boxes.append(
            (
                left + int(xs.min()),
                top + int(ys.min()),
                left + int(xs.max()) + 1,
                top + int(ys.max()) + 1,
            )
        )
    return tuple(boxes)


def draw_scale_marks(frame: NDArray[np.uint8], layout: Layout, spacing_mm: float) -> None:
    """A gray bar and 1 cm depth ticks right of the image area."""
    _, y0, x1, y1 = layout.image_area
    ramp = np.linspace(255, 0, y1 - y0).astype(np.uint8)
    bar = min(x1 + 8, layout.columns - 8)
    frame[y0:y1, bar : bar + 6] = ramp[:, None, None]
    ticks = np.arange(0.0, (y1 - y0) * spacing_mm, 10.0)
    for depth in ticks:
        row = y0 + round(depth / spacing_mm)
        frame[row : row + 2, x1 + 1 : x1 + 5] = 200
