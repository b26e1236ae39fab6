"""Where the nodule sits: which lobe (transverse view) and which third (longitudinal view).

Lobe
    Transverse images are viewed from the feet: the patient's right is on the
    image left. The lobe is the gland component holding the nodule; its
    thickest column (most gland pixels) is taken as the lobe's centre, and
    the gland reaches further from it towards the midline (isthmus over the
    trachea) than laterally. Midline on the image right means the patient's
    right lobe, on the image left the left lobe. Equal reaches are undecided.
Third
    In a longitudinal image the lobe's long axis runs along image x with the
    cranial (upper) pole on the image left. The nodule centroid's position
    along the gland component's x extent (pixel edges) splits into thirds:
    below 1/3 upper, above 2/3 lower, else middle. When the gland is cut by
    one side edge of the crop, the lobe is taken as symmetric about its
    thickest part (the middle of the columns at least :data:`PLATEAU` of the
    greatest thickness) and the hidden pole is mirrored from the visible
    one; a plateau touching the cut, or cuts on both sides, are undecided.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from imaging.features.geometry import BoolMap, Unavailable

Side = Literal["right", "left"]
Third = Literal["upper", "middle", "lower"]

_EIGHT = np.ones((3, 3), dtype=bool)
PLATEAU = 0.95


def gland_component(region: BoolMap, nodule: BoolMap) -> BoolMap | None:
    """The 8-connected component of ``region`` that overlaps ``nodule`` most, if any."""
    labels, _ = ndimage.label(region, structure=_EIGHT)
    hits = labels[nodule & region]
    if hits.size == 0:
        return None
    return np.asarray(labels == np.bincount(hits).argmax())


def lobe_side(region: BoolMap, nodule: BoolMap) -> Side | Unavailable:
    """The lobe holding ``nodule`` on a transverse view, or why it cannot be told."""
    lobe = gland_component(region, nodule)
    if lobe is None:
        return Unavailable("the nodule lies outside the thyroid")
    thickness = lobe.sum(axis=0)
    cols = np.flatnonzero(thickness)
    centre = int(np.argmax(thickness))
    reach_left, reach_right = centre - int(cols.min()), int(cols.max()) - centre
    if reach_left == reach_right:
        return Unavailable(
            "the gland is symmetric about its thickest column; the midline is unknown"
        )
    return "right" if reach_right > reach_left else "left"


def lobe_length_span(lobe: BoolMap, tip_fraction: float = 0.0) -> tuple[float, float] | Unavailable:
    """The lobe's extent along image x in pixel edges, the hidden pole mirrored (module doc).

    ``lobe`` is the gland component of a longitudinal view. With ``tip_fraction``
    the extent ends where the lobe thins below that share of its greatest
    thickness; whether a pole is cut is read from the whole lobe (a thin tip on
    the crop's edge is a cut pole).
    """
    thickness = lobe.sum(axis=0)
    cols = np.flatnonzero(thickness)
    cut_left, cut_right = cols.min() == 0, cols.max() + 1 == lobe.shape[1]
    core = np.flatnonzero(thickness >= max(tip_fraction * thickness.max(), 1))
    start, stop = float(core.min()), float(core.max() + 1)
    if not (cut_left or cut_right):
        return start, stop
    plateau = np.flatnonzero(thickness >= PLATEAU * thickness.max())
    low, high = float(plateau.min()), float(plateau.max() + 1)
    if (cut_left and (cut_right or low == 0)) or (cut_right and high == lobe.shape[1]):
        return Unavailable("the lobe is cut by the crop's edges; its length is unknown")
    middle = (low + high) / 2
    return (2 * middle - stop, stop) if cut_left else (start, 2 * middle - start)


def lobe_third(region: BoolMap, nodule: BoolMap) -> Third | Unavailable:
    """The third of the lobe holding ``nodule`` on a longitudinal view, or why not."""
    lobe = gland_component(region, nodule)
    if lobe is None:
        return Unavailable("the nodule lies outside the thyroid")
    span = lobe_length_span(lobe)
    if isinstance(span, Unavailable):
        return span
    start, stop = span
    centre = float(np.nonzero(nodule)[1].mean()) + 0.5
    t = (centre - start) / (stop - start)
    if t < 1 / 3:
        return "upper"
    return "lower" if t > 2 / 3 else "middle"
