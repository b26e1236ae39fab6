"""A view's lobe on the template canvas: the frame every registration starts from.

Lobe box
    The gland component holding the index nodule (:func:`gland_component`)
    gives the box; its columns thinner than :data:`TIP_FRACTION` of the
    thickest are left out along x, so where a segmenter ends a tapering pole
    moves the box little; whether a pole or a lateral edge is cut by the
    crop is read from the whole component (a thin tip on the crop's edge is a
    cut pole). Longitudinal views: along x the lobe from pole to pole
    (:func:`lobe_length_span`: a lobe cut by one crop edge is taken as
    symmetric about its thickest part). Transverse views: the lobe is taken as
    symmetric about its thickest part (the middle of the columns at least
    :data:`PLATEAU` of the greatest thickness), its half width the reach to
    the lateral edge, so the isthmus on the midline side lies outside the box
    whether or not the crop cuts it; a lateral edge on the crop's edge is
    unavailable. Along y: the gland's rows over the box's columns.
Canvas
    The box maps onto the interior of a :data:`CANVAS` canvas (:data:`MARGIN`
    pixels left free on each side), one scale per axis: calibrated or not, a
    lobe fills the same canvas. Masks are smoothed by half a crop-to-canvas
    step before sampling, so canvas values are area fractions (0-1). Canvas
    pixels that come from outside the crop (a cut pole) take the value of the
    pixel mirrored about the canvas's centre column.
Side
    Which template a view belongs to: the transverse view reads its own lobe
    (:func:`lobe_side`); a longitudinal view takes the study's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from imaging.features.extract import Location, View, ViewFeatures, index_component
from imaging.features.geometry import BoolMap, Unavailable, gland
from imaging.features.position import (
    PLATEAU,
    Side,
    gland_component,
    lobe_length_span,
    lobe_side,
)

CanvasMap = NDArray[np.float32]
# About 0.8 mm per template pixel for a typical lobe (45 x 15 mm long, 17 x 14 mm across).
CANVAS: dict[View, tuple[int, int]] = {"transverse": (28, 32), "longitudinal": (24, 64)}
MARGIN = 3
TIP_FRACTION = 0.2  # columns thinner than this share of the thickest are the lobe's tip
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in crop pixel edges
_OTHER_SIDE: dict[Side, Side] = {"right": "left", "left": "right"}


@dataclass(frozen=True, eq=False)
class FramedView:
    """One view's gland, index nodule and CPDT location map on its plane's canvas."""

    plane: View
    side: Side | None  # the view's own lobe (transverse views), else None
    gland: CanvasMap  # area fraction of gland, hidden parts mirrored
    nodule: CanvasMap  # area fraction of the index nodule
    location: CanvasMap  # the CPDT map x_l (phi on the nodule, 0 elsewhere)
    box: Box  # the lobe box in the crop


def mirrored(view: FramedView) -> FramedView:
    """``view`` flipped left to right: a left lobe's transverse view as a right lobe's."""
    return FramedView(
        plane=view.plane,
        side=None if view.side is None else _OTHER_SIDE[view.side],
        gland=np.ascontiguousarray(view.gland[:, ::-1]),
        nodule=np.ascontiguousarray(view.nodule[:, ::-1]),
        location=np.ascontiguousarray(view.location[:, ::-1]),
        box=view.box,
    )


def _transverse_span(lobe: BoolMap, side: Side) -> tuple[float, float] | Unavailable:
    thickness = lobe.sum(axis=0)
    edge = np.flatnonzero(thickness)
    # The right lobe's midline is on the image right: its lateral edge is the left one.
    if (edge.min() == 0) if side == "right" else (edge.max() + 1 == lobe.shape[1]):
        return Unavailable("the lobe's lateral edge is cut by the crop")
    cols = np.flatnonzero(thickness >= max(TIP_FRACTION * thickness.max(), 1))
    plateau = np.flatnonzero(thickness >= PLATEAU * thickness.max())
    middle = (float(plateau.min()) + float(plateau.max() + 1)) / 2
    lateral = float(cols.min()) if side == "right" else float(cols.max() + 1)
    half = abs(middle - lateral)
    if half == 0:
        return Unavailable("the lobe has no width beside its thickest part")
    return middle - half, middle + half


def lobe_box(region: BoolMap, nodule: BoolMap, plane: View, side: Side) -> Box | Unavailable:
    """The lobe box (module docstring) of the gland component holding ``nodule``."""
    lobe = gland_component(region, nodule)
    if lobe is None:
        return Unavailable("the nodule lies outside the thyroid")
    span = (
        lobe_length_span(lobe, TIP_FRACTION)
        if plane == "longitudinal"
        else _transverse_span(lobe, side)
    )
    if isinstance(span, Unavailable):
        return span
    x0, x1 = span
    columns = lobe[:, max(int(np.floor(x0)), 0) : min(int(np.ceil(x1)), lobe.shape[1])]
    rows = np.flatnonzero(columns.any(axis=1))
    if rows.size == 0:
        return Unavailable("the lobe box holds no gland")
    return x0, float(rows.min()), x1, float(rows.max() + 1)


def _sampler(box: Box, plane: View) -> tuple[CanvasMap, CanvasMap, float]:
    """Crop coordinates (centres at integers) of every canvas pixel centre, and the step."""
    height, width = CANVAS[plane]
    x0, y0, x1, y1 = box
    sx = (x1 - x0) / (width - 2 * MARGIN)
    sy = (y1 - y0) / (height - 2 * MARGIN)
    u = x0 + (np.arange(width, dtype=np.float64) + 0.5 - MARGIN) * sx - 0.5
    v = y0 + (np.arange(height, dtype=np.float64) + 0.5 - MARGIN) * sy - 0.5
    map_x = np.broadcast_to(u[None, :], (height, width)).astype(np.float32)
    map_y = np.broadcast_to(v[:, None], (height, width)).astype(np.float32)
    return map_x, map_y, max(sx, sy)


def _sample(values: NDArray[Any], map_x: CanvasMap, map_y: CanvasMap, step: float) -> CanvasMap:
    source = values.astype(np.float32)
    if step > 1.0:
        source = np.asarray(cv2.GaussianBlur(source, (0, 0), step / 2), dtype=np.float32)
    return np.asarray(
        cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT),
        dtype=np.float32,
    )


def frame_view(
    region: BoolMap,
    nodule: BoolMap,
    location: Location,
    plane: View,
    side: Side | None,
) -> FramedView | Unavailable:
    """The view on its plane's canvas, or why it cannot be framed.

    ``region`` is the gland (thyroid or nodule, holes filled), ``nodule`` the
    index nodule, ``location`` its CPDT location; ``side`` the study's lobe,
    used by a longitudinal view (a transverse view reads its own).
    """
    own = lobe_side(region, nodule) if plane == "transverse" else None
    if isinstance(own, Unavailable):
        return own
    lobe = own or side
    if lobe is None:
        return Unavailable("the lobe is unknown: no transverse view told it")
    box = lobe_box(region, nodule, plane, lobe)
    if isinstance(box, Unavailable):
        return box
    map_x, map_y, step = _sampler(box, plane)
    gland = _sample(region, map_x, map_y, step)
    rows, columns = region.shape
    hidden = (map_x < -0.5) | (map_x > columns - 0.5) | (map_y < -0.5) | (map_y > rows - 0.5)
    mirrored = hidden[:, ::-1]
    gland = np.where(hidden & ~mirrored, gland[:, ::-1], gland).astype(np.float32)
    return FramedView(
        plane=plane,
        side=own,
        gland=gland,
        nodule=_sample(nodule, map_x, map_y, step),
        location=_sample(location.cpdt, map_x, map_y, step),
        box=box,
    )


def study_side(views: Iterable[ViewFeatures]) -> Side | None:
    """The lobe of a study's index nodule: from the first view that tells it (a transverse one)."""
    for view in views:
        if view.index is not None and isinstance(view.index.lobe, str):
            return view.index.lobe
    return None


def frame_index_nodule(
    nodules: BoolMap, thyroid: BoolMap, features: ViewFeatures, side: Side | None
) -> FramedView | Unavailable:
    """The view's index nodule framed (:func:`frame_view`) from its crop's masks, or why not.

    ``features`` are the view's (:func:`imaging.features.extract_view` of these masks).
    """
    index, plane = features.index, features.view
    if index is None or not isinstance(index.location, Location):
        return Unavailable("the view has no located index nodule")
    if plane is None:
        return Unavailable("the view plane is unknown")
    region = gland(thyroid, nodules)
    return frame_view(region, index_component(nodules, index), index.location, plane, side)
