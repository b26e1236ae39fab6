"""Mask geometry: input checks, nodule components, the capsule distance map.

Distances use a pixel-centre model: pixel ``(i, j)`` is a sample at its centre
and a mask boundary runs along the *cracks* between a pixel inside and its
4-neighbour outside. Each crack is represented by its midpoint, half a pixel
from both centres. The capsule is the set of cracks between the gland
(thyroid mask, plus the nodules, holes filled) and the rest of the crop;
cracks on the crop's edge are not capsule (the gland may go on beyond it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

BoolMap = NDArray[np.bool_]
FloatMap = NDArray[np.float64]
Unit = Literal["mm", "px"]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Unavailable:
    """A feature that cannot be measured on this view, and why."""

    reason: str


def as_mask(mask: NDArray[np.generic], name: str, shape: tuple[int, int]) -> BoolMap:
    """``mask`` as bool (non-zero is inside), checked against the crop's ``shape``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D or its shape differs from ``shape``.
    """
    if mask.ndim != 2 or mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}; the crop is {shape} (rows, columns)")
    return np.asarray(mask != 0)


def spacing(mm_per_pixel: tuple[float, float] | None) -> tuple[tuple[float, float], Unit]:
    """(x, y) size of a pixel and its unit: mm when calibrated, else 1 px.

    Raises
    ------
    ValueError
        If a spacing is not a positive finite number.
    """
    if mm_per_pixel is None:
        return (1.0, 1.0), "px"
    sx, sy = (float(v) for v in mm_per_pixel)
    if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
        raise ValueError(f"mm_per_pixel must be two positive numbers, got {mm_per_pixel}")
    return (sx, sy), "mm"


def components(nodules: BoolMap) -> list[BoolMap]:
    """The 8-connected components of the nodule mask, in label (raster) order."""
    labels, count = ndimage.label(nodules, structure=_EIGHT)
    return [np.asarray(labels == k) for k in range(1, count + 1)]


def gland(thyroid: BoolMap, nodules: BoolMap) -> BoolMap:
    """The gland whose boundary is the capsule: thyroid or nodule, holes filled."""
    return np.asarray(ndimage.binary_fill_holes(thyroid | nodules), dtype=bool)


def _cracks(mask: BoolMap) -> tuple[BoolMap, BoolMap]:
    """Cracks where ``mask`` changes: (horizontal neighbours, vertical neighbours)."""
    return mask[:, 1:] != mask[:, :-1], mask[1:, :] != mask[:-1, :]


def _doubled(h_cracks: BoolMap, v_cracks: BoolMap, shape: tuple[int, int]) -> BoolMap:
    """Crack midpoints on the doubled grid: pixel (i, j) sits at (2i + 1, 2j + 1)."""
    rows, cols = shape
    grid = np.zeros((2 * rows + 1, 2 * cols + 1), dtype=bool)
    grid[1::2, 2:-1:2] = h_cracks  # between (i, j) and (i, j + 1)
    grid[2:-1:2, 1::2] = v_cracks  # between (i, j) and (i + 1, j)
    return grid


@dataclass(frozen=True)
class CapsuleMap:
    """Distances to the capsule on the doubled grid (see :func:`capsule_map`)."""

    doubled: FloatMap  # (2H + 1, 2W + 1); entries at odd/odd are pixel centres
    has_capsule: bool

    @property
    def centres(self) -> FloatMap:
        """Distance from each pixel centre to the nearest capsule crack, (H, W)."""
        return self.doubled[1::2, 1::2]

    def boundary_distance(self, nodule: BoolMap) -> float:
        """Minimum distance from the nodule's boundary cracks to the capsule (0 on contact)."""
        h_cracks, v_cracks = _cracks(nodule)
        where = _doubled(h_cracks, v_cracks, nodule.shape)
        if not where.any():  # the nodule fills the crop: no boundary inside it
            return float(self.centres[nodule].min())
        return float(self.doubled[where].min())


def capsule_map(region: BoolMap, pixel: tuple[float, float]) -> CapsuleMap:
    """Euclidean distance to the nearest capsule crack midpoint, anisotropy included.

    One ``distance_transform_edt`` on the doubled grid with ``sampling`` of half
    a pixel gives every pixel centre and every crack midpoint its distance.
    """
    h_cracks, v_cracks = _cracks(region)
    capsule = _doubled(h_cracks, v_cracks, region.shape)
    if not capsule.any():
        return CapsuleMap(doubled=np.zeros(capsule.shape), has_capsule=False)
    sx, sy = pixel
    doubled = ndimage.distance_transform_edt(~capsule, sampling=(sy / 2, sx / 2))
    return CapsuleMap(doubled=np.asarray(doubled, dtype=np.float64), has_capsule=True)
