"""Thyroid nodules: what is drawn (size, shape, echo, margin, foci) and their outline.

A nodule is an ellipsoid with semi-axes ``width`` (left-right), ``depth``
(anterior-posterior) and ``length`` (cranio-caudal), whose outline in each
view is perturbed by a radial harmonic series that sets the shape class:

- round: almost no perturbation;
- lobulated: a few smooth bulges (harmonics 3-6);
- irregular: many harmonics with falling amplitude (2-16), angular outline;
- taller-than-wide: depth > width in the transverse view, mildly perturbed.

The outline is star-shaped about the centre, so membership of a point is
exact: ``rho <= r(theta)`` in coordinates scaled by the semi-axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from phantoms.labels import Calcification, Echogenicity, Margin, Region, Shape

FloatArray = NDArray[np.float64]

SHAPES: tuple[Shape, ...] = ("round", "lobulated", "irregular", "taller-than-wide")
ECHOGENICITIES: tuple[Echogenicity, ...] = (
    "hyperechoic",
    "isoechoic",
    "hypoechoic",
    "very hypoechoic",
)
MARGINS: tuple[Margin, ...] = ("well-defined", "ill-defined")
CALCIFICATIONS: tuple[Calcification, ...] = ("none", "micro", "macro")
REGIONS: tuple[Region, ...] = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Harmonics:
    """Radial perturbation ``r(t) = 1 + sum a_k cos(k t + phase_k)``."""

    orders: tuple[int, ...]
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def radius(self, theta: FloatArray) -> FloatArray:
        """The relative radius at each angle (>= 0.45)."""
        r = np.ones_like(theta)
        for k, a, phase in zip(self.orders, self.amplitudes, self.phases, strict=True):
            r += a * np.cos(k * theta + phase)
        return np.maximum(r, 0.45)


@dataclass(frozen=True)
class NoduleSpec:
    """One nodule: the features a radiologist reports and the label model uses."""

    lobe: str  # "right" or "left"
    region: Region
    width_mm: float  # full extent left-right (before the outline perturbation)
    depth_mm: float  # anterior-posterior
    length_mm: float  # cranio-caudal
    shape: Shape
    echogenicity: Echogenicity
    margin: Margin
    calcification: Calcification
    transverse_outline: Harmonics
    longitudinal_outline: Harmonics
    target_capsule_mm: float  # where the nodule is placed; the measured distance may differ
    capsule_side: str  # "anterior", "posterior", "lateral" or "medial"

    @property
    def echo_ratio(self) -> float:
        """Mean echo intensity relative to normal thyroid tissue."""
        return {
            "hyperechoic": 2.6,
            "isoechoic": 0.8,
            "hypoechoic": 0.13,
            "very hypoechoic": 0.035,
        }[self.echogenicity]

    @property
    def halo_mm(self) -> float:
        """Width of the hypoechoic rim inside the edge (0: none).

        Isoechoic and hyperechoic nodules are told apart from the gland in
        practice by such a halo (a thin dark rim); without it an isoechoic
        nodule in speckle would be invisible even to a radiologist.
        """
        return 1.0 if self.echogenicity in ("isoechoic", "hyperechoic") else 0.0

    @property
    def margin_blur_mm(self) -> float:
        """Width of the soft transition at the nodule edge."""
        return 0.08 if self.margin == "well-defined" else 0.35


def _harmonics(rng: np.random.Generator, shape: Shape) -> Harmonics:
    if shape == "lobulated":
        orders = tuple(int(k) for k in rng.choice(np.arange(3, 7), size=2, replace=False))
        amplitudes = tuple(float(a) for a in rng.uniform(0.07, 0.14, size=2))
    elif shape == "irregular":
        orders = tuple(range(2, 17))
        amplitudes = tuple(float(rng.uniform(0.5, 1.0) * 0.16 / k**0.7) for k in orders)
    else:
        orders = (2, 3)
        amplitudes = tuple(float(a) for a in rng.uniform(0.0, 0.03, size=2))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=len(orders)))
    return Harmonics(orders=orders, amplitudes=amplitudes, phases=phases)


def sample_nodule(rng: np.random.Generator) -> NoduleSpec:
    """Draw a nodule; 73 % are under 10 mm as in the paper's cohort."""
    shape: Shape = SHAPES[int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]
    size = float(np.clip(rng.lognormal(np.log(8.0), 0.45), 3.5, 30.0))
    if shape == "taller-than-wide":
        depth = size
        width = size / rng.uniform(1.15, 1.6)
        length = size * rng.uniform(0.8, 1.0)
    else:
        width = size * rng.uniform(0.8, 1.0)
        depth = width * rng.uniform(0.6, 0.95)
        length = size * rng.uniform(0.85, 1.0)
        if rng.random() < 0.5:
            width, length = length, width
    near = rng.random() < 0.25
    return NoduleSpec(
        lobe="right" if rng.random() < 0.5 else "left",
        region=REGIONS[int(rng.choice(3, p=[0.3, 0.4, 0.3]))],
        width_mm=float(width),
        depth_mm=float(depth),
        length_mm=float(length),
        shape=shape,
        echogenicity=ECHOGENICITIES[int(rng.choice(4, p=[0.08, 0.22, 0.55, 0.15]))],
        margin=MARGINS[int(rng.choice(2, p=[0.6, 0.4]))],
        calcification=CALCIFICATIONS[int(rng.choice(3, p=[0.5, 0.35, 0.15]))],
        transverse_outline=_harmonics(rng, shape),
        longitudinal_outline=_harmonics(rng, shape),
        target_capsule_mm=float(rng.uniform(0.0, 2.5) if near else rng.uniform(3.5, 12.0)),
        capsule_side=str(
            rng.choice(["anterior", "posterior", "lateral", "medial"], p=[0.4, 0.3, 0.2, 0.1])
        ),
    )


@dataclass(frozen=True)
class Outline:
    """A nodule outline in one view, in millimetres of that view's image plane."""

    cx: float
    cy: float
    ax: float  # semi-axis along the image x axis
    ay: float  # semi-axis along depth
    harmonics: Harmonics

    def contains(self, x: FloatArray, y: FloatArray) -> NDArray[np.bool_]:
        """Exact membership of points (mm)."""
        u = (x - self.cx) / self.ax
        v = (y - self.cy) / self.ay
        return np.hypot(u, v) <= self.harmonics.radius(np.arctan2(v, u))

    def boundary(self, n: int = 2048) -> FloatArray:
        """``n`` points on the outline, shape (n, 2) as (x, y) mm."""
        theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        r = self.harmonics.radius(theta)
        return np.column_stack(
            (self.cx + self.ax * r * np.cos(theta), self.cy + self.ay * r * np.sin(theta))
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of the outline (mm)."""
        points = self.boundary(512)
        return (
            float(points[:, 0].min()),
            float(points[:, 1].min()),
            float(points[:, 0].max()),
            float(points[:, 1].max()),
        )
