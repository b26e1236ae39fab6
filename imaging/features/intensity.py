"""Texture ``x_t``, margin ``x_m`` and echogenicity ``x_e`` of one nodule.

Texture
    The grey crop (BT.601 luma for colour) inside the nodule's bounding box
    widened by the edge band width (below) on every side, clipped to the
    crop, so the margin patch holds the whole band; grey levels clipped to their 1st-99th
    percentiles in that box and mapped linearly onto [0.1, 0.9] (float32; a
    flat box is 0.5).
Margin
    The same box and values, keeping the edge band: pixels whose Euclidean
    distance to the nearest pixel across the nodule boundary is at most
    ``band`` pixels (``band`` layers on either side),
    ``band = max(2, round(BAND_FRACTION * d))`` with ``d`` the nodule's
    equivalent diameter in pixels. The interior (nodule pixels deeper than
    the band) becomes a random mosaic: its pixels, grouped by ``band x band``
    tiles, are written back tile after tile in a seeded random tile order,
    filling the interior positions in tile order. It is an exact permutation
    of the interior, local texture survives within tiles, and the outline is
    no longer legible inside. Everything else is 0, below the texture range.
Echogenicity
    Mean grey (0-255) inside the nodule minus the mean in a ring of
    :data:`RING_PX` pixels just outside it (dilation by a disc), excluding
    every nodule and clipped to the thyroid mask, so the reference is
    parenchyma and not muscle or fat. Where the clipped ring is empty (no
    thyroid next to the nodule) the unclipped ring is used and the result
    says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from imaging.features.geometry import BoolMap

Image8 = NDArray[np.uint8]
Float32Map = NDArray[np.float32]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (ends exclusive)

BAND_FRACTION = 0.1
RING_PX = 3
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0
TEXTURE_RANGE = (0.1, 0.9)


def grey(image: Image8) -> Image8:
    """ITU-R BT.601 luma of an (H, W, 3) RGB image, or the (H, W) image itself."""
    if image.ndim == 2:
        return image
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def texture_box(nodule: BoolMap, pad: int) -> Box:
    """The nodule's bounding box widened by ``pad`` pixels, clipped to the crop."""
    rows, cols = np.nonzero(nodule)
    x0, x1 = int(cols.min()), int(cols.max()) + 1
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    height, width = nodule.shape
    return max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)


def texture(grey_image: Image8, box: Box) -> Float32Map:
    """The percentile-clipped texture patch of ``box`` on [0.1, 0.9]."""
    x0, y0, x1, y1 = box
    patch = grey_image[y0:y1, x0:x1].astype(np.float64)
    low, high = (float(v) for v in np.percentile(patch, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    lo, hi = TEXTURE_RANGE
    if high <= low:
        return np.full(patch.shape, (lo + hi) / 2, dtype=np.float32)
    scaled = lo + (np.clip(patch, low, high) - low) / (high - low) * (hi - lo)
    return scaled.astype(np.float32)


def band_width(nodule: BoolMap) -> int:
    """Edge band half-width in pixels for this nodule."""
    diameter = 2.0 * math.sqrt(np.count_nonzero(nodule) / math.pi)
    return max(2, round(BAND_FRACTION * diameter))


def margin(patch: Float32Map, nodule: BoolMap, band: int, seed: int) -> Float32Map:
    """The edge band of ``patch`` with the interior mosaicked (``nodule`` cut to the patch)."""
    inside = ndimage.distance_transform_edt(nodule)
    outside = ndimage.distance_transform_edt(~nodule)
    keep = (nodule & (inside <= band)) | (~nodule & (outside <= band))
    interior = nodule & ~keep
    out = np.where(keep, patch, np.float32(0.0)).astype(np.float32)
    rows, cols = np.nonzero(interior)
    if rows.size == 0:
        return out
    tiles_x = -(-patch.shape[1] // band)
    tile = (rows // band) * tiles_x + cols // band
    order = np.argsort(tile, kind="stable")  # interior positions in tile order
    rows, cols, tile = rows[order], cols[order], tile[order]
    starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
    groups = np.split(patch[rows, cols], starts[1:])
    shuffled = np.random.default_rng(seed).permutation(len(groups))
    out[rows, cols] = np.concatenate([groups[k] for k in shuffled])
    return out


@dataclass(frozen=True)
class Echogenicity:
    """Mean grey inside the nodule and in the ring just outside it."""

    inside_mean: float
    ring_mean: float | None  # None when no ring pixel lies in the crop
    ring_in_thyroid: bool  # whether the ring was clipped to the thyroid

    @property
    def difference(self) -> float | None:
        """``x_e``: inside mean minus ring mean (grey levels)."""
        return None if self.ring_mean is None else self.inside_mean - self.ring_mean


def echogenicity(
    grey_image: Image8, nodule: BoolMap, all_nodules: BoolMap, thyroid: BoolMap
) -> Echogenicity:
    """Echogenicity of ``nodule`` against the parenchyma ring around it."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING_PX + 1, 2 * RING_PX + 1))
    ring = cv2.dilate(nodule.astype(np.uint8), disc).astype(bool) & ~all_nodules
    clipped = ring & thyroid
    in_thyroid = bool(clipped.any())
    used = clipped if in_thyroid else ring
    inside_mean = float(grey_image[nodule].mean())
    ring_mean = float(grey_image[used].mean()) if used.any() else None
    return Echogenicity(inside_mean=inside_mean, ring_mean=ring_mean, ring_in_thyroid=in_thyroid)
