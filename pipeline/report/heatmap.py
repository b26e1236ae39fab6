"""The heatmap image a person looks at: the crop, the Grad-CAM++ map, a colour bar, a caption.

Layout
------
The crop (grey shown as RGB) keeps its pixels except where the heatmap is
above 0 (only inside the index nodule's box), where the map in the JET colour
map is blended in, and along the index nodule's contour. A panel to the right
holds a vertical colour bar labelled ``high`` / ``low``; a band below holds the
result caption, word-wrapped to the image width, and the view plane. Text is
drawn with OpenCV at a font scale that follows the crop's width, so any viewer
shows it legibly at the crop's own size.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray

from imaging.png import read_png
from pipeline.report.inputs import ReportView

RGB8 = NDArray[np.uint8]

BLEND = 0.45  # weight of the colour-mapped heatmap where it is above 0
CONTOUR_RGB = (255, 255, 255)
TEXT_RGB = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def font_scale(width: int) -> float:
    """About 10 px high capitals on a 512 px wide crop, growing with the width."""
    return max(0.4, width / 1000)


def _thickness(scale: float) -> int:
    return 1 if scale < 0.8 else 2


def line_height(scale: float) -> int:
    """The height of a caption line at font ``scale``, spacing included."""
    (_, height), baseline = cv2.getTextSize("Hg", FONT, scale, _thickness(scale))
    return round((height + baseline) * 1.5)


def _colour_map(values: NDArray[np.uint8]) -> RGB8:
    bgr = cv2.applyColorMap(values, cv2.COLORMAP_JET)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _as_rgb(image: NDArray[np.uint8]) -> RGB8:
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def _index_contour(view: ReportView) -> list[NDArray[np.int32]]:
    """The largest outer contour of the nodule mask inside the index nodule's box."""
    index = view.measured.features.index
    if index is None:
        return []
    x0, y0, x1, y1 = index.box
    mask = read_png(view.measured.segmented.nodule_mask, grey=True)
    inside = np.ascontiguousarray(mask[y0:y1, x0:x1])
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    return [np.asarray(largest + np.array([x0, y0]), dtype=np.int32)]


def _overlay(view: ReportView) -> RGB8:
    """The crop with the heatmap blended in where it is above 0 and the contour drawn."""
    crop = _as_rgb(read_png(view.measured.segmented.crop.png_path))
    heat = read_png(view.heatmap, grey=True)
    blended = crop.astype(np.float32) * (1 - BLEND) + _colour_map(heat) * BLEND
    out = np.where((heat > 0)[:, :, None], np.rint(blended), crop).astype(np.uint8)
    cv2.drawContours(out, _index_contour(view), -1, CONTOUR_RGB, 1, cv2.LINE_AA)
    return out


def colour_bar_panel(
    height: int,
    scale: float,
    colour_map: Callable[[NDArray[np.uint8]], RGB8] = _colour_map,
    labels: tuple[str, str] = ("high", "low"),
) -> RGB8:
    """A black panel with a vertical bar of ``colour_map``, ``labels`` at its top and bottom."""
    thickness = _thickness(scale)
    label_width = max(cv2.getTextSize(t, FONT, scale, thickness)[0][0] for t in labels)
    bar_width = max(12, round(24 * scale))
    margin = max(6, round(12 * scale))
    text_height = cv2.getTextSize("high", FONT, scale, thickness)[0][1]
    panel = np.zeros((height, 3 * margin + bar_width + label_width, 3), dtype=np.uint8)
    top, bottom = margin, height - margin
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
    panel[top:bottom, margin : margin + bar_width] = colour_map(np.repeat(ramp, bar_width, axis=1))
    x_text = 2 * margin + bar_width
    for text, y in ((labels[0], top + text_height), (labels[1], bottom)):
        cv2.putText(panel, text, (x_text, y), FONT, scale, TEXT_RGB, thickness, cv2.LINE_AA)
    return panel


def wrap_text(text: str, width: int, scale: float) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (words stay whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        fits = cv2.getTextSize(candidate, FONT, scale, _thickness(scale))[0][0] <= width
        if lines and fits:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def caption_band(lines: list[str], width: int, scale: float) -> RGB8:
    """A black band holding ``lines`` of white text, left-aligned."""
    step = line_height(scale)
    margin = step // 2
    band = np.zeros((2 * margin + step * len(lines), width, 3), dtype=np.uint8)
    for n, line in enumerate(lines):
        baseline = margin + step * (n + 1) - step // 3
        cv2.putText(
            band, line, (margin, baseline), FONT, scale, TEXT_RGB, _thickness(scale), cv2.LINE_AA
        )
    return band


def view_plane(view: ReportView) -> str:
    """E.g. ``Transverse view``, from the features stage or the image's View Code Sequence."""
    plane = view.measured.features.view or view.measured.segmented.crop.view
    return f"{plane.capitalize()} view" if plane else "View plane unknown"


def render_heatmap(view: ReportView, caption: str) -> RGB8:
    """The heatmap overlay of ``view`` with its colour bar and caption, as uint8 (H, W, 3) RGB.

    The crop occupies rows ``0:crop.rows`` and columns ``0:crop.columns`` of the
    result; the colour bar lies to its right and the caption band below.

    Raises
    ------
    StageError
        If the crop, nodule mask or heatmap PNG cannot be read.
    """
    overlay = _overlay(view)
    scale = font_scale(overlay.shape[1])
    top = np.hstack([overlay, colour_bar_panel(overlay.shape[0], scale)])
    margin = line_height(scale) // 2
    lines = [*wrap_text(caption, top.shape[1] - 2 * margin, scale), view_plane(view)]
    return np.vstack([top, caption_band(lines, top.shape[1], scale)])
