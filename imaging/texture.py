"""Grey-level and speckle statistics of an image, for the scope gate to compare with training.

Fifteen numbers (:data:`TEXTURE_WIDTH`) of the central three quarters of a
grey image (its margins hold the crop's edges and acoustic shadows):

* the normalised autocorrelation at lags of 1, 2 and 4 pixels across, then
  1, 2 and 4 down: the speckle's grain size;
* the log of the Laplacian's variance over the image's variance: fine noise;
* the 5th, 25th, 50th, 75th and 95th grey-level percentiles (/ 255) and the
  log of the standard deviation (+ 1): gain and dynamic range;
* the shares of saturated (>= 250) and black (<= 5) pixels.

A colour image is read as the mean of its channels.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

TEXTURE_WIDTH = 15
LAGS = (1, 2, 4)
PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


def texture_statistics(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The :data:`TEXTURE_WIDTH` statistics of ``image`` (H, W) or (H, W, C), in order."""
    grey = image.astype(np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    h, w = grey.shape
    centre = grey[h // 8 : h - h // 8, w // 8 : w - w // 8]
    if centre.size == 0:
        centre = grey
    zero_mean = centre - centre.mean()
    variance = float(zero_mean.var())
    scale = variance if variance > 0 else 1.0
    across = [_autocorrelation(zero_mean, lag, 0) / scale for lag in LAGS]
    down = [_autocorrelation(zero_mean, 0, lag) / scale for lag in LAGS]
    laplacian = cv2.Laplacian(centre, cv2.CV_64F)
    fine = float(np.log((float(laplacian.var()) + 1e-6) / (variance + 1e-6)))
    levels = np.percentile(centre, PERCENTILES) / 255.0
    values = [
        *across,
        *down,
        fine,
        *levels,
        float(np.log(centre.std() + 1.0)),
        float((centre >= 250).mean()),
        float((centre <= 5).mean()),
    ]
    return np.asarray(values, dtype=np.float32)


def _autocorrelation(zero_mean: NDArray[np.float64], dx: int, dy: int) -> float:
    """Mean product of ``zero_mean`` with itself shifted by ``dx`` columns and ``dy`` rows."""
    h, w = zero_mean.shape
    if dx >= w or dy >= h:
        return 0.0
    return float((zero_mean[dy:, dx:] * zero_mean[: h - dy, : w - dx]).mean())
