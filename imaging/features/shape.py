"""Shape ``x_s``: length, width, aspect ratio and the taller-than-wide sign.

Length and width are the sides of the minimum-area rectangle
(``cv2.minAreaRect``) around the corners of the nodule's pixels, so an
axis-aligned ``w x h`` pixel block measures exactly ``w`` by ``h``. In mm
the corners are first scaled by the (x, y) spacing, so anisotropic pixels
give true lengths (the rectangle may turn). Taller-than-wide follows TI-RADS:
the anteroposterior extent (image y) exceeds the transverse extent (image x),
both measured axis-aligned over the pixels' full extent.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from imaging.features.geometry import BoolMap

_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


@dataclass(frozen=True)
class Dimensions:
    """Sizes of one nodule in one unit."""

    length: float  # longer side of the minimum-area rectangle
    width: float  # shorter side
    angle_deg: float  # direction of the length from image x, in [0, 180), y pointing down
    horizontal: float  # transverse (image x) extent
    vertical: float  # anteroposterior (image y) extent

    @property
    def aspect_ratio(self) -> float:
        """Length over width (>= 1)."""
        return self.length / self.width

    @property
    def taller_than_wide(self) -> bool:
        """Whether the anteroposterior extent exceeds the transverse one."""
        return self.vertical > self.horizontal


def _corner_points(nodule: BoolMap) -> NDArray[np.float64]:
    """Corners (x, y) of the pixels on the nodule's outer boundary."""
    edge = nodule & ~cv2.erode(nodule.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows, cols = np.nonzero(edge)
    centres = np.column_stack((cols, rows)).astype(np.float64)
    return np.asarray((centres[:, None, :] + _CORNERS[None, :, :]).reshape(-1, 2))


def dimensions(nodule: BoolMap, pixel: tuple[float, float]) -> Dimensions:
    """Dimensions of a non-empty nodule with pixels ``pixel`` = (x, y) units wide."""
    points = _corner_points(nodule) * np.asarray(pixel)
    (_, _), (side_a, side_b), angle = cv2.minAreaRect(points.astype(np.float32))
    # OpenCV's angle belongs to side_a; the length's direction is side_b's if it is longer.
    direction = angle if side_a >= side_b else angle + 90.0
    rows, cols = np.nonzero(nodule)
    return Dimensions(
        length=float(max(side_a, side_b)),
        width=float(min(side_a, side_b)),
        angle_deg=float(direction % 180.0),
        horizontal=float((cols.max() - cols.min() + 1) * pixel[0]),
        vertical=float((rows.max() - rows.min() + 1) * pixel[1]),
    )
