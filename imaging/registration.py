"""Symmetric diffeomorphic registration of a framed view to its plane's gland template.

Images
    What is registered is each gland's depth map: the distance from the
    capsule over the gland (canvas pixels), divided by its largest value (1 at
    the deepest point, 0 on the capsule and outside), i.e. one minus the
    gland-wide CPDT map. The registration is dipy's SyN
    (``SymmetricDiffeomorphicRegistration``, the symmetric diffeomorphic
    algorithm the paper uses through ANTs) with a cross-correlation metric
    (dipy's SyN offers CC, SSD and EM, not mutual information): template
    fixed, view moving, :data:`LEVEL_ITERATIONS` at three scales.
What is warped
    With the same map, linearly interpolated: the view's gland, its index
    nodule and its CPDT location map ``x_l`` (the registered map ``x_l^R``).
Quality (per view)
    ``dice``: Dice of the warped gland (> 0.5) with the template's mask;
    ``mse``: mean squared difference of the warped and the template's
    gland-wide CPDT maps over the canvas (the paper's MSE, eq. 14).
Nodule position
    The centroid of the warped nodule map, in template pixels (centres at
    integers); None when nothing of the nodule is left on the canvas.
Templates
    :func:`build_template`: start from the pixelwise mean of the framed glands
    (> 0.5), then :data:`TEMPLATE_ITERATIONS` times register every gland to
    the template and take the mean of the warped glands (> 0.5) as the next.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
from dipy.align.metrics import CCMetric
from numpy.typing import NDArray
from scipy import ndimage

from imaging.features.extract import View
from imaging.gland_frame import CanvasMap, FramedView
from imaging.overlap import dice

Float64Map = NDArray[np.float64]
LEVEL_ITERATIONS = (40, 20, 10)  # coarsest scale first
CC_SIGMA = 1.0  # smoothing of the metric's gradient, canvas pixels
CC_RADIUS = 2  # half side of the cross-correlation window
TEMPLATE_ITERATIONS = 2
# dipy logs every scale of every registration at INFO.
logging.getLogger("dipy").setLevel(logging.WARNING)


@dataclass(frozen=True, eq=False)
class Template:
    """The standard gland of one plane and side, on its canvas."""

    plane: View
    side: str
    mask: NDArray[np.bool_]

    @property
    def depth(self) -> Float64Map:
        """The template's depth map (module docstring)."""
        return depth_map(self.mask)


@dataclass(frozen=True, eq=False)
class Registered:
    """A view warped onto its template, and how well it fits."""

    gland: CanvasMap
    nodule: CanvasMap
    location: CanvasMap  # x_l^R
    dice: float
    mse: float
    position: tuple[float, float] | None  # the nodule's centroid (x, y), template pixels


def depth_map(gland: NDArray[np.generic]) -> Float64Map:
    """Distance from the capsule over the gland (> 0.5), scaled to 1 at the deepest point."""
    inside = np.asarray(gland) > 0.5
    if not inside.any():
        return np.zeros(inside.shape, dtype=np.float64)
    depth = np.asarray(ndimage.distance_transform_edt(inside), dtype=np.float64)
    return np.asarray(depth / depth.max(), dtype=np.float64)


def _cpdt(depth: Float64Map) -> Float64Map:
    return np.where(depth > 0, 1.0 - depth, 0.0)


def centroid(weights: NDArray[np.floating]) -> tuple[float, float] | None:
    """The weighted centroid (x, y) of a map, pixel centres at integers; None if it sums to 0."""
    total = float(weights.sum())
    if total <= 1e-6:
        return None
    rows, cols = np.indices(weights.shape)
    return float((cols * weights).sum() / total), float((rows * weights).sum() / total)


def _warp_gland(template_depth: Float64Map, gland: CanvasMap) -> tuple[object, CanvasMap]:
    metric = CCMetric(2, sigma_diff=CC_SIGMA, radius=CC_RADIUS)
    registration = SymmetricDiffeomorphicRegistration(metric, level_iters=list(LEVEL_ITERATIONS))
    mapping = registration.optimize(template_depth, depth_map(gland))
    return mapping, _transform(mapping, gland)


def _transform(mapping: object, values: CanvasMap) -> CanvasMap:
    warped = mapping.transform(values.astype(np.float64))  # type: ignore[attr-defined]
    return np.clip(np.asarray(warped, dtype=np.float32), 0.0, None)


def register(template: Template, view: FramedView) -> Registered:
    """Register ``view`` to ``template`` (module docstring).

    Raises
    ------
    ValueError
        If the view's plane or canvas differs from the template's.
    """
    if view.plane != template.plane or view.gland.shape != template.mask.shape:
        raise ValueError(
            f"a {view.plane} view {view.gland.shape} cannot be registered to the "
            f"{template.plane} template {template.mask.shape}"
        )
    template_depth = template.depth
    mapping, gland = _warp_gland(template_depth, view.gland)
    nodule = _transform(mapping, view.nodule)
    location = _transform(mapping, view.location)
    warped_cpdt = _cpdt(depth_map(gland))
    return Registered(
        gland=gland,
        nodule=nodule,
        location=location,
        dice=dice(gland > 0.5, template.mask),
        mse=float(np.mean((warped_cpdt - _cpdt(template_depth)) ** 2)),
        position=centroid(nodule),
    )


def build_template(
    plane: View, side: str, glands: Sequence[CanvasMap], iterations: int = TEMPLATE_ITERATIONS
) -> Template:
    """The mean gland of ``glands`` after registration (module docstring).

    Raises
    ------
    ValueError
        If ``glands`` is empty.
    """
    if not glands:
        raise ValueError(f"no {plane} {side} glands to build a template from")
    mask = np.mean(np.stack(glands), axis=0) > 0.5
    for _ in range(iterations):
        depth = depth_map(mask)
        warped = [_warp_gland(depth, gland)[1] for gland in glands]
        mask = np.mean(np.stack(warped), axis=0) > 0.5
    return Template(plane=plane, side=side, mask=np.asarray(mask))
