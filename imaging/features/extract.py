"""Per-view feature extraction: the index nodule's features and the other nodules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from imaging.features.geometry import (
    BoolMap,
    CapsuleMap,
    Unavailable,
    Unit,
    as_mask,
    capsule_map,
    components,
    gland,
    spacing,
)
from imaging.features.intensity import (
    Box,
    Echogenicity,
    Float32Map,
    band_width,
    echogenicity,
    grey,
    margin,
    texture,
    texture_box,
)
from imaging.features.position import Side, Third, gland_component, lobe_side, lobe_third
from imaging.features.shape import Dimensions, dimensions

View = Literal["transverse", "longitudinal"]


@dataclass(frozen=True, eq=False)
class Location:
    """CPDT location ``x_l`` and the capsule distances, in ``unit``."""

    cpdt: Float32Map  # (H, W): phi = 1 - d / d_max on the nodule, 0 elsewhere
    capsule_distance: float  # min over the nodule boundary; 0 when it touches the capsule
    d_max: float  # distance from C to the capsule
    deepest_point: tuple[int, int]  # C as (x, y) pixel indices
    gland_box: Box  # x0, y0, x1, y1 of the gland component holding the nodule
    unit: Unit


@dataclass(frozen=True)
class OtherNodule:
    """A nodule of the view other than the index nodule."""

    area_px: int
    centroid: tuple[float, float]  # (x, y) pixel coordinates, centres at integers
    capsule_distance: float | None  # in the view's unit; None when location is unavailable


@dataclass(frozen=True, eq=False)
class NoduleFeatures:
    """Every feature of the index nodule of one view."""

    area_px: int
    centroid: tuple[float, float]  # (x, y) pixel coordinates
    box: Box  # texture / margin box x0, y0, x1, y1 in the crop
    texture: Float32Map  # x_t, (y1 - y0, x1 - x0)
    margin: Float32Map  # x_m, same box; 0 outside the edge band
    band_px: int  # edge band width of the margin, also the mosaic tile side
    echogenicity: Echogenicity  # x_e = echogenicity.difference
    shape_px: Dimensions  # x_s in pixels
    shape_mm: Dimensions | None  # x_s in mm when calibrated
    location: Location | Unavailable  # x_l and the capsule distance
    lobe: Side | Unavailable  # from a transverse view
    third: Third | Unavailable  # from a longitudinal view
    calibrated: bool


@dataclass(frozen=True, eq=False)
class ViewFeatures:
    """Features of one view: the index nodule (None when the mask holds none) and the rest."""

    view: View | None
    index: NoduleFeatures | None
    others: tuple[OtherNodule, ...]
    calibrated: bool


def _centroid(nodule: BoolMap) -> tuple[float, float]:
    rows, cols = np.nonzero(nodule)
    return float(cols.mean()), float(rows.mean())


def _location(
    nodule: BoolMap, thyroid: BoolMap, region: BoolMap, distances: CapsuleMap, unit: Unit
) -> Location | Unavailable:
    if not thyroid.any():
        return Unavailable("the thyroid mask is empty")
    lobe = gland_component(region, nodule)
    if lobe is None or not (lobe & thyroid).any():
        return Unavailable("the nodule does not touch the thyroid mask")
    if not distances.has_capsule:
        return Unavailable("the thyroid mask has no boundary inside the crop")
    centres = distances.centres
    inside = np.where(lobe, centres, -1.0)
    row, col = np.unravel_index(int(np.argmax(inside)), inside.shape)
    d_max = float(inside[row, col])
    cpdt = np.zeros(nodule.shape, dtype=np.float32)
    cpdt[nodule] = 1.0 - centres[nodule] / d_max
    rows, cols = np.nonzero(lobe)
    return Location(
        cpdt=cpdt,
        capsule_distance=distances.boundary_distance(nodule),
        d_max=d_max,
        deepest_point=(int(col), int(row)),
        gland_box=(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1),
        unit=unit,
    )


def index_component(nodules: BoolMap, index: NoduleFeatures) -> BoolMap:
    """The 8-connected component of ``nodules`` closest to ``index`` in area, then centroid.

    Raises
    ------
    ValueError
        If ``nodules`` is empty.
    """
    labels, count = ndimage.label(nodules, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        raise ValueError("the nodule mask is empty")
    numbers = range(1, count + 1)
    areas = ndimage.sum_labels(nodules, labels, numbers)
    centres = ndimage.center_of_mass(nodules, labels, numbers)  # (row, column)
    cx, cy = index.centroid

    def mismatch(k: int) -> tuple[float, float]:
        row, col = centres[k]
        return abs(float(areas[k]) - index.area_px), float(np.hypot(col - cx, row - cy))

    best = min(range(count), key=mismatch)
    return np.asarray(labels == best + 1)


def _index_order(area: int, distance: float | None, label: int) -> tuple[int, float, int]:
    """Sort key of the index rule: largest area, then nearest the capsule, then raster order."""
    return -area, np.inf if distance is None else distance, label


def extract_view(
    image: NDArray[np.uint8],
    nodule_mask: NDArray[np.generic],
    thyroid_mask: NDArray[np.generic],
    mm_per_pixel: tuple[float, float] | None,
    *,
    view: View | None = None,
    seed: int = 0,
) -> ViewFeatures:
    """Features of one view from a crop, its nodule and thyroid masks and its calibration.

    Parameters
    ----------
    image
        The crop, uint8 (H, W) grey or (H, W, 3) RGB.
    nodule_mask, thyroid_mask
        (H, W) masks at the crop's resolution; non-zero is inside. The thyroid
        mask may include the nodules or leave them as holes.
    mm_per_pixel
        (x, y) pixel spacing in mm, or None: distances and sizes are then in pixels.
    view
        ``"transverse"`` gives the lobe, ``"longitudinal"`` the third; None neither.
    seed
        Seed of the margin mosaic.

    Raises
    ------
    ValueError
        If the image is not uint8 (H, W) or (H, W, 3), a mask's shape differs
        from the image's, or the spacing is not positive.
    """
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"image must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}"
        )
    shape = (int(image.shape[0]), int(image.shape[1]))
    nodules = as_mask(nodule_mask, "nodule_mask", shape)
    thyroid = as_mask(thyroid_mask, "thyroid_mask", shape)
    pixel, unit = spacing(mm_per_pixel)
    calibrated = unit == "mm"
    parts = components(nodules)
    if not parts:
        return ViewFeatures(view=view, index=None, others=(), calibrated=calibrated)
    region = gland(thyroid, nodules)
    distances = capsule_map(region, pixel)
    located = [_location(part, thyroid, region, distances, unit) for part in parts]
    order = sorted(
        range(len(parts)),
        key=lambda k: _index_order(
            int(np.count_nonzero(parts[k])),
            loc.capsule_distance if isinstance(loc := located[k], Location) else None,
            k,
        ),
    )
    others = tuple(
        OtherNodule(
            area_px=int(np.count_nonzero(parts[k])),
            centroid=_centroid(parts[k]),
            capsule_distance=loc.capsule_distance
            if isinstance(loc := located[k], Location)
            else None,
        )
        for k in order[1:]
    )
    nodule, location = parts[order[0]], located[order[0]]
    luma = grey(image)
    band = band_width(nodule)
    box = texture_box(nodule, band)
    x0, y0, x1, y1 = box
    patch = texture(luma, box)
    return ViewFeatures(
        view=view,
        index=NoduleFeatures(
            area_px=int(np.count_nonzero(nodule)),
            centroid=_centroid(nodule),
            box=box,
            texture=patch,
            margin=margin(patch, nodule[y0:y1, x0:x1], band, seed),
            band_px=band,
            echogenicity=echogenicity(luma, nodule, nodules, thyroid),
            shape_px=dimensions(nodule, (1.0, 1.0)),
            shape_mm=dimensions(nodule, pixel) if calibrated else None,
            location=location,
            lobe=_lobe(view, thyroid, region, nodule),
            third=_third(view, thyroid, region, nodule),
            calibrated=calibrated,
        ),
        others=others,
        calibrated=calibrated,
    )


def _lobe(
    view: View | None, thyroid: BoolMap, region: BoolMap, nodule: BoolMap
) -> Side | Unavailable:
    if view != "transverse":
        return Unavailable("the lobe is read from the transverse view")
    if not thyroid.any():
        return Unavailable("the thyroid mask is empty")
    return lobe_side(region, nodule)


def _third(
    view: View | None, thyroid: BoolMap, region: BoolMap, nodule: BoolMap
) -> Third | Unavailable:
    if view != "longitudinal":
        return Unavailable("the third is read from the longitudinal view")
    if not thyroid.any():
        return Unavailable("the thyroid mask is empty")
    return lobe_third(region, nodule)


def _dimensions(shape: Dimensions, unit: str) -> dict[str, Any]:
    return {
        f"length_{unit}": shape.length,
        f"width_{unit}": shape.width,
        f"horizontal_{unit}": shape.horizontal,
        f"vertical_{unit}": shape.vertical,
        "aspect_ratio": shape.aspect_ratio,
        "angle_deg": shape.angle_deg,
        "taller_than_wide": shape.taller_than_wide,
    }


def summarize(features: ViewFeatures) -> dict[str, Any]:
    """JSON-serialisable scalars of ``features`` for the audit trail (no arrays).

    Distances carry their unit in the key: ``_mm`` when calibrated, else ``_px``.
    """
    out: dict[str, Any] = {
        "view": features.view,
        "calibrated": features.calibrated,
        "nodule_found": features.index is not None,
        "nodules": len(features.others) + (features.index is not None),
    }
    nodule = features.index
    if nodule is None:
        out["reason"] = "no nodule found in the nodule mask"
        return out
    echo = nodule.echogenicity
    location = nodule.location
    out["index"] = {
        "area_px": nodule.area_px,
        "centroid_px": list(nodule.centroid),
        "box": list(nodule.box),
        "band_px": nodule.band_px,
        "echogenicity": echo.difference,
        "echo_inside_mean": echo.inside_mean,
        "echo_ring_mean": echo.ring_mean,
        "echo_ring_in_thyroid": echo.ring_in_thyroid,
        "shape_px": _dimensions(nodule.shape_px, "px"),
        "shape_mm": None if nodule.shape_mm is None else _dimensions(nodule.shape_mm, "mm"),
        "location": {"unavailable": location.reason}
        if isinstance(location, Unavailable)
        else {
            f"capsule_distance_{location.unit}": location.capsule_distance,
            f"d_max_{location.unit}": location.d_max,
            "deepest_point_px": list(location.deepest_point),
            "cpdt_max": float(location.cpdt[location.cpdt > 0].max(initial=0.0)),
        },
        "lobe": nodule.lobe
        if isinstance(nodule.lobe, str)
        else {"unavailable": nodule.lobe.reason},
        "third": nodule.third
        if isinstance(nodule.third, str)
        else {"unavailable": nodule.third.reason},
    }
    unit = "mm" if features.calibrated else "px"
    out["others"] = [
        {
            "area_px": other.area_px,
            "centroid_px": list(other.centroid),
            f"capsule_distance_{unit}": other.capsule_distance,
        }
        for other in features.others
    ]
    return out
