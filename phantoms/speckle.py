"""B-mode image formation: speckle, attenuation and log compression of a tissue map.

The model is the usual first-order one for a linear array:

1. each pixel holds a mean backscatter intensity ``echo`` (tissue class,
   texture, nodule) and an attenuation coefficient (per mm, net of the
   time-gain compensation, so plain tissue loses little with depth while
   air, bone and calcium cast shadows and fluid enhances what lies below);
2. the intensity reaching depth ``y`` is ``echo * exp(-cumsum(attenuation))``;
3. scatterers are complex circular Gaussian noise weighted by the square
   root of that intensity and blurred by an anisotropic Gaussian point
   spread function (narrow axially, wider laterally): the envelope of the
   result is Rayleigh distributed around the local mean, i.e. speckle;
4. the envelope is log compressed into 8 bits over a dynamic range in dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

FloatImage = NDArray[np.float32]

# Gray level (0-255) of normal thyroid parenchyma (intensity 1.0) after compression.
_PARENCHYMA_GRAY = 150.0


@dataclass(frozen=True)
class TissueMaps:
    """What the transducer sees, on the image area's pixel grid (rows = depth)."""

    echo: FloatImage  # mean backscatter intensity; thyroid parenchyma = 1.0
    attenuation: FloatImage  # per mm, net of time-gain compensation
    artefact: FloatImage  # intensity added after attenuation (reverberation)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: tuple[float, float]
) -> FloatImage:
    """Zero-mean, unit-variance Gaussian noise correlated over ``scale_px`` (x, y)."""
    h, w = shape
    small = (max(2, round(w / scale_px[0]) + 2), max(2, round(h / scale_px[1]) + 2))
    coarse = rng.standard_normal((small[1], small[0])).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(field.std())
    return (field - float(field.mean())) / (std if std > 0 else 1.0)


def render_bmode(
    maps: TissueMaps,
    *,
    spacing_mm: float,
    rng: np.random.Generator,
    dynamic_range_db: float,
    gain_db: float,
    speckle_scale: float = 1.0,
) -> NDArray[np.uint8]:
    """Form the 8-bit B-mode image of ``maps`` (same shape as the maps).

    ``speckle_scale`` multiplies the point spread function's widths, and with
    them the speckle's correlation length (the grain size).
    """
    h, w = maps.echo.shape
    transmitted = np.exp(-np.cumsum(maps.attenuation, axis=0) * np.float32(spacing_mm))
    intensity = maps.echo * transmitted + maps.artefact
    scatter = rng.standard_normal((h, w, 2)).astype(np.float32)
    scatter *= np.sqrt(np.maximum(intensity, 0.0))[:, :, None]
    # Point spread function: about 0.12 mm axial, 0.28 mm lateral (sigma) at speckle_scale 1.
    sigma_x = max(0.28 * speckle_scale / spacing_mm, 0.5)
    sigma_y = max(0.12 * speckle_scale / spacing_mm, 0.4)
    kx = cv2.getGaussianKernel(2 * int(3 * sigma_x) + 1, sigma_x)
    ky = cv2.getGaussianKernel(2 * int(3 * sigma_y) + 1, sigma_y)
    norm = float(np.sqrt(2.0 * (kx**2).sum() * (ky**2).sum()))
    blurred = cv2.sepFilter2D(scatter, -1, kx, ky, borderType=cv2.BORDER_REFLECT)
    envelope = np.hypot(blurred[:, :, 0], blurred[:, :, 1]) / norm
    decibels = 20.0 * np.log10(envelope + 1e-6) + gain_db
    gray = (_PARENCHYMA_GRAY + decibels * (255.0 / dynamic_range_db)).astype(np.float32)
    smoothed = cv2.GaussianBlur(gray, (3, 3), 0.6)
    return np.clip(smoothed, 0, 255).astype(np.uint8)
