"""The numbers of a population risk map: its smoothing, statistics and agreement with truth.

:func:`statistics` gives the paper's statistics on the cases (LLNM rate by
capsule-distance band and by third); :func:`truth_agreement` compares built
maps with the generator's truth; :func:`quality` summarises registrations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from models.risk_map import MIN_COVERAGE, RATE_SMOOTHING_PX, PopulationMap, region_of

CAPSULE_BAND_MM = 2.5  # the paper: LLNM probability > 72 % below this distance


class CaseFacts(Protocol):
    """What the statistics read of a case."""

    @property
    def label(self) -> bool:
        """LLNM."""

    @property
    def probability(self) -> float | None:
        """The generator's true probability (phantoms only)."""

    @property
    def capsule_mm(self) -> float | None:
        """The study's nodule-capsule distance in mm."""

    @property
    def third(self) -> str | None:
        """The third of the lobe holding the nodule."""


def smoothed_ratio(top: NDArray[Any], bottom: NDArray[Any]) -> NDArray[np.float32]:
    """Smoothed ``top`` over smoothed ``bottom``; NaN where ``bottom`` is under the minimum."""
    num = ndimage.gaussian_filter(top.astype(np.float64), RATE_SMOOTHING_PX)
    den = ndimage.gaussian_filter(bottom.astype(np.float64), RATE_SMOOTHING_PX)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den >= MIN_COVERAGE, num / den, np.nan)
    return ratio.astype(np.float32)


def scaled(values: NDArray[Any], inside: NDArray[np.bool_]) -> NDArray[np.float32]:
    """``values`` scaled to 0-1 over ``inside`` (NaN outside; 0 where it is constant)."""
    low, high = float(values[inside].min()), float(values[inside].max())
    span = high - low if high > low else 1.0
    return np.where(inside, (values - low) / span, np.nan).astype(np.float32)


def _rate(labels: Sequence[bool]) -> dict[str, Any]:
    return {"cases": len(labels), "llnm_rate": round(float(np.mean(labels)), 4) if labels else None}


def statistics(cases: Sequence[CaseFacts]) -> dict[str, Any]:
    """The paper's statistics on these cases: LLNM rate by capsule band and by third."""

    def group(keep: Callable[[CaseFacts], bool]) -> dict[str, Any]:
        chosen = [c for c in cases if keep(c)]
        out = _rate([c.label for c in chosen])
        probabilities = [c.probability for c in chosen if c.probability is not None]
        if probabilities and len(probabilities) == len(chosen):
            out["mean_true_probability"] = round(float(np.mean(probabilities)), 4)
        return out

    near, far = f"< {CAPSULE_BAND_MM} mm", f">= {CAPSULE_BAND_MM} mm"
    return {
        "capsule_distance": {
            near: group(lambda c: c.capsule_mm is not None and c.capsule_mm < CAPSULE_BAND_MM),
            far: group(lambda c: c.capsule_mm is not None and c.capsule_mm >= CAPSULE_BAND_MM),
            "unknown": group(lambda c: c.capsule_mm is None),
        },
        "third": {
            name: group(lambda c, t=third: c.third == t)  # type: ignore[misc]
            for name, third in (
                ("upper", "upper"),
                ("middle", "middle"),
                ("lower", "lower"),
                ("unknown", None),
            )
        },
    }


def _correlation(a: NDArray[Any], b: NDArray[Any]) -> float | None:
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3 or np.std(a[both]) == 0 or np.std(b[both]) == 0:
        return None
    return round(float(np.corrcoef(a[both], b[both])[0, 1]), 4)


def _third_means(
    values: NDArray[Any], weights: NDArray[Any], plane: str, side: str
) -> dict[str, float]:
    width = values.shape[1]
    means: dict[str, float] = {}
    for region in sorted({region_of(plane, side, x, width) for x in range(width)}):
        cols = [x for x in range(width) if region_of(plane, side, x, width) == region]
        v, w = values[:, cols], weights[:, cols]
        ok = np.isfinite(v) & (w > 0)
        if ok.any():
            means[region] = round(float(np.average(v[ok], weights=w[ok])), 4)
    return means


def truth_agreement(
    entry: PopulationMap,
    true_coverage: NDArray[Any],
    true_difference: NDArray[Any],
    coverage: NDArray[Any],
    plane: str,
    side: str,
) -> dict[str, Any]:
    """How the built maps match the generator's truth on the same template.

    The truth of the rate map is the same smoothed ratio with each case's true
    probability in place of its sampled label; that of the paper's map is the
    location maps weighted by ``2 p - 1`` instead of ``+-1``. Regions: the
    coverage-weighted mean of each map over each template third.
    """
    true_rate = smoothed_ratio(true_coverage, coverage)
    true_scaled = scaled(true_difference, entry.template.mask)
    weights = ndimage.gaussian_filter(coverage, RATE_SMOOTHING_PX)
    built = _third_means(entry.maps["rate"], weights, plane, side)
    truth = _third_means(true_rate, weights, plane, side)
    return {
        "rate_correlation": _correlation(entry.maps["rate"], true_rate),
        "difference_correlation": _correlation(entry.maps["difference"], true_scaled),
        "rate_by_region": built,
        "true_rate_by_region": truth,
        "highest_region": max(built, key=built.__getitem__) if built else None,
        "true_highest_region": max(truth, key=truth.__getitem__) if truth else None,
    }


def quality(values: Sequence[float]) -> dict[str, Any]:
    """Count, 5th percentile, median and 95th percentile of per-view values."""
    if not values:
        return {"views": 0}
    q = np.percentile(values, [5, 50, 95])
    return {
        "views": len(values),
        "p5": round(float(q[0]), 4),
        "median": round(float(q[1]), 4),
        "p95": round(float(q[2]), 4),
    }
