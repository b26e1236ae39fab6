"""One view's features as LLNM-Net inputs: three S x S maps and a few scalars.

Maps
    ``x_l`` (the CPDT map cut to the texture box), ``x_t`` and ``x_m`` are
    letterboxed into ``size`` x ``size`` (one scale for both axes, centred,
    zero padding), so a nodule's aspect ratio is never changed. Texture and
    margin are resized with area averaging, the location map bilinearly.
Scalars
    ``echogenicity``: ``x_e`` (grey levels of the standardised crop) / 128,
    0 when there is no ring to compare with. ``shape``: aspect ratio
    (length / width) - 1, taller-than-wide (1 or 0), length and width in
    units of :data:`SIZE_SCALE_MM` mm; uncalibrated views convert pixels
    with :data:`ASSUMED_MM_PER_PIXEL`.
Position in the gland (:func:`position_vector`)
    ``x_l`` is cut to the nodule's box, so where the nodule sits in the gland
    travels beside it as :data:`POSITION_FEATURES` scalars: a "known" flag,
    the nodule box's centre (u, v) and size (w, h) as fractions of the box of
    the gland component holding it (in a longitudinal view u runs from the
    cranial to the caudal pole, in a transverse view across the neck), the
    nodule-capsule distance in units of :data:`CAPSULE_SCALE_MM` (at most
    :data:`CAPSULE_CAP`; uncalibrated views convert pixels as for the shape), then
    the study's lobe (+1 right, -1 left, 0 unknown; read from the transverse
    view), its third as one-hot upper, middle, lower (read from the
    longitudinal view; all 0 when unknown), and the study's nodule-capsule
    distance, the smallest over its views, in the same units as the view's
    own (one view can miss where the nodule comes closest to the capsule, and
    the risk follows the closest point, a per-view model cannot take a
    minimum over views). Lobe, third and that distance belong to the study, so
    every view of it carries them (:func:`study_position`). The vector only
    grows at its end: a model built for fewer features reads the first ones
    (``TMDLConfig.position_features``; 10 before the study's distance).
Location unavailable
    When the thyroid mask gave no location, ``x_l`` and the position are all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from imaging.features import Location, NoduleFeatures
from imaging.features.position import Side, Third

SHAPE_FEATURES = 4
POSITION_FEATURES = 11
CAPSULE_SCALE_MM = 10.0
CAPSULE_CAP = 1.5
_SIDES: dict[str, float] = {"right": 1.0, "left": -1.0}
_THIRDS: tuple[Third, ...] = ("upper", "middle", "lower")
SIZE_SCALE_MM = 20.0
ASSUMED_MM_PER_PIXEL = 0.1
ECHO_SCALE = 128.0

FloatMap = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class ViewInputs:
    """The model inputs of one view (float32)."""

    location: FloatMap  # (S, S)
    texture: FloatMap  # (S, S)
    margin: FloatMap  # (S, S)
    echogenicity: float
    shape: NDArray[np.float32]  # (SHAPE_FEATURES,)
    position: NDArray[np.float32]  # (POSITION_FEATURES,)


def demographics(sex: str | None, age_years: float | None) -> tuple[float, float]:
    """Sex as 1 (F), -1 (M) or 0 (unknown) and age as years / 100 (0 when unknown)."""
    return {"F": 1.0, "M": -1.0}.get(sex or "", 0.0), (age_years or 0.0) / 100.0


def letterbox(values: FloatMap, size: int, interpolation: int) -> FloatMap:
    """``values`` (h, w) resized into (size, size) with its aspect ratio kept, centred, 0-padded.

    Raises
    ------
    ValueError
        If ``values`` is empty or ``size`` is not positive.
    """
    height, width = values.shape
    if height == 0 or width == 0 or size < 1:
        raise ValueError(f"cannot letterbox a {values.shape} map into {size}x{size}")
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = cv2.resize(
        np.ascontiguousarray(values, dtype=np.float32), (new_w, new_h), interpolation=interpolation
    )
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def unletterbox(values: FloatMap, height: int, width: int) -> FloatMap:
    """The inverse of :func:`letterbox`: an (S, S) map back to (height, width), bilinearly."""
    size = values.shape[0]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    inner = np.ascontiguousarray(values[top : top + new_h, left : left + new_w], dtype=np.float32)
    return np.asarray(cv2.resize(inner, (width, height), interpolation=cv2.INTER_LINEAR))


def shape_vector(nodule: NoduleFeatures) -> NDArray[np.float32]:
    """``x_s`` as :data:`SHAPE_FEATURES` scalars (module docstring)."""
    if nodule.shape_mm is not None:
        length, width = nodule.shape_mm.length, nodule.shape_mm.width
    else:
        length = nodule.shape_px.length * ASSUMED_MM_PER_PIXEL
        width = nodule.shape_px.width * ASSUMED_MM_PER_PIXEL
    return np.array(
        [
            nodule.shape_px.aspect_ratio - 1.0,
            1.0 if nodule.shape_px.taller_than_wide else 0.0,
            length / SIZE_SCALE_MM,
            width / SIZE_SCALE_MM,
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class StudyPosition:
    """Where the study's index nodule sits, as far as its views tell: None when unknown."""

    side: Side | None  # the first view that tells it (a transverse one)
    third: Third | None  # likewise (a longitudinal one)
    capsule_mm: float | None  # the smallest nodule-capsule distance over the views


def capsule_mm(location: Location) -> float:
    """A view's nodule-capsule distance in mm (pixels converted as in the module docstring)."""
    distance = location.capsule_distance
    return distance * ASSUMED_MM_PER_PIXEL if location.unit == "px" else distance


def study_position(nodules: Sequence[NoduleFeatures]) -> StudyPosition:
    """The study's lobe, third and closest nodule-capsule distance over its views."""
    sides = [n.lobe for n in nodules if isinstance(n.lobe, str)]
    thirds = [n.third for n in nodules if isinstance(n.third, str)]
    distances = [capsule_mm(n.location) for n in nodules if isinstance(n.location, Location)]
    return StudyPosition(
        side=sides[0] if sides else None,
        third=thirds[0] if thirds else None,
        capsule_mm=min(distances) if distances else None,
    )


def position_vector(nodule: NoduleFeatures, study: StudyPosition) -> NDArray[np.float32]:
    """Where the nodule sits in the gland: :data:`POSITION_FEATURES` scalars (module docstring)."""
    out = np.zeros(POSITION_FEATURES, dtype=np.float32)
    if not isinstance(nodule.location, Location):
        return out
    gx0, gy0, gx1, gy1 = nodule.location.gland_box
    x0, y0, x1, y1 = nodule.box
    gw, gh = gx1 - gx0, gy1 - gy0
    own = capsule_mm(nodule.location)
    out[:6] = (
        1.0,
        ((x0 + x1) / 2 - gx0) / gw,
        ((y0 + y1) / 2 - gy0) / gh,
        (x1 - x0) / gw,
        (y1 - y0) / gh,
        _capsule_feature(own),
    )
    out[6] = _SIDES.get(study.side or "", 0.0)
    if study.third is not None:
        out[7 + _THIRDS.index(study.third)] = 1.0
    out[10] = _capsule_feature(own if study.capsule_mm is None else min(own, study.capsule_mm))
    return out


def _capsule_feature(distance_mm: float) -> float:
    return min(distance_mm / CAPSULE_SCALE_MM, CAPSULE_CAP)


def view_inputs(nodule: NoduleFeatures, size: int, study: StudyPosition) -> ViewInputs:
    """The inputs of a view's index nodule, maps letterboxed to ``size`` x ``size``.

    ``study`` is the study's position (:func:`study_position`) over all its chosen views,
    this one included.
    """
    x0, y0, x1, y1 = nodule.box
    if isinstance(nodule.location, Location):
        location = letterbox(nodule.location.cpdt[y0:y1, x0:x1], size, cv2.INTER_LINEAR)
    else:
        location = np.zeros((size, size), dtype=np.float32)
    difference = nodule.echogenicity.difference
    return ViewInputs(
        location=location,
        texture=letterbox(nodule.texture, size, cv2.INTER_AREA),
        margin=letterbox(nodule.margin, size, cv2.INTER_AREA),
        echogenicity=0.0 if difference is None else difference / ECHO_SCALE,
        shape=shape_vector(nodule),
        position=position_vector(nodule, study),
    )
