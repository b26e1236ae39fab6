"""Recalibration of a bundle's LLNM probability on a site's outcomes.

Maps
    ``platt``: a logistic map of the probability's logit, ``sigmoid(a * logit(p)
    + b)``, fitted by maximum likelihood (scipy's L-BFGS). ``isotonic``: the
    non-decreasing step function closest to the outcomes in least squares
    (pool-adjacent-violators), interpolated linearly between its steps.
Steps
    A bundle's calibration is a sequence of such maps applied in order: a
    bundle recalibrated again keeps its parent's maps and adds one, since the
    site's probabilities it was fitted on were already the parent's output.
Threshold
    With a target sensitivity, the highest threshold whose sensitivity on the
    site's calibrated probabilities reaches it; otherwise 0.5.
Storage
    ``calibration/calibration.json`` in the bundle; none means the identity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize

CALIBRATION_DIR = "calibration"
CALIBRATION_FILE = "calibration.json"
Method = Literal["platt", "isotonic"]
_EPS = 1e-6


@dataclass(frozen=True)
class CalibrationStep:
    """One map of probabilities (module docstring)."""

    method: Method
    a: float = 1.0  # platt
    b: float = 0.0  # platt
    knots_x: tuple[float, ...] = ()  # isotonic: increasing probabilities
    knots_y: tuple[float, ...] = ()  # isotonic: their calibrated values

    def apply(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        """The calibrated probabilities of ``p``."""
        if self.method == "platt":
            clipped = np.clip(p, _EPS, 1 - _EPS)
            logit = np.log(clipped / (1 - clipped))
            return np.asarray(1.0 / (1.0 + np.exp(-(self.a * logit + self.b))))
        return np.asarray(np.interp(p, self.knots_x, self.knots_y))


@dataclass(frozen=True)
class Calibration:
    """A bundle's calibration: steps applied in order (none: the identity)."""

    steps: tuple[CalibrationStep, ...] = ()

    def __call__(self, probability: float) -> float:
        """The calibrated probability."""
        return float(self.apply(np.array([probability]))[0])

    def apply(self, probabilities: ArrayLike) -> NDArray[np.float64]:
        """The calibrated probabilities of an array."""
        p = np.asarray(probabilities, dtype=np.float64)
        for step in self.steps:
            p = step.apply(p)
        return p


def fit_platt(probabilities: ArrayLike, labels: ArrayLike) -> CalibrationStep:
    """Platt scaling of ``probabilities`` to ``labels`` (module docstring)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    logit = np.log(p / (1 - p))

    def loss(params: NDArray[np.float64]) -> float:
        z = params[0] * logit + params[1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    found = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
    return CalibrationStep("platt", a=float(found.x[0]), b=float(found.x[1]))


def fit_isotonic(probabilities: ArrayLike, labels: ArrayLike) -> CalibrationStep:
    """Isotonic regression of ``labels`` on ``probabilities`` (pool-adjacent-violators)."""
    order = np.argsort(np.asarray(probabilities, dtype=np.float64), kind="mergesort")
    x = np.asarray(probabilities, dtype=np.float64)[order]
    y = np.asarray(labels, dtype=np.float64)[order]
    blocks: list[list[float]] = []  # [sum of y, count, first x, last x]
    for xi, yi in zip(x, y, strict=True):
        blocks.append([yi, 1.0, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, _, last = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][3] = last
    knots_x: list[float] = []
    knots_y: list[float] = []
    for total, count, first, last in blocks:
        for point in (first, last) if last > first else (first,):
            knots_x.append(point)
            knots_y.append(total / count)
    return CalibrationStep("isotonic", knots_x=tuple(knots_x), knots_y=tuple(knots_y))


def fit(method: Method, probabilities: ArrayLike, labels: ArrayLike) -> CalibrationStep:
    """The step of ``method`` fitted on the site's probabilities and outcomes."""
    return (fit_platt if method == "platt" else fit_isotonic)(probabilities, labels)


def threshold_for_sensitivity(probabilities: ArrayLike, labels: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (positive at >= threshold)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives = np.sort(p[y])[::-1]
    if positives.size == 0:
        raise ValueError("a target sensitivity needs LLNM-positive cases")
    needed = math.ceil(target * positives.size)
    return float(positives[max(needed, 1) - 1])


def load_calibration(bundle_dir: Path) -> Calibration:
    """The bundle's calibration; the identity without one."""
    path = bundle_dir / CALIBRATION_DIR / CALIBRATION_FILE
    if not path.is_file():
        return Calibration()
    steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
    return Calibration(
        tuple(
            CalibrationStep(s["method"], s["a"], s["b"], tuple(s["knots_x"]), tuple(s["knots_y"]))
            for s in steps
        )
    )


def save_calibration(bundle_dir: Path, steps: Sequence[CalibrationStep]) -> None:
    """Write ``steps`` as the bundle's calibration (seal the bundle afterwards)."""
    folder = bundle_dir / CALIBRATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"steps": [asdict(s) for s in steps]}, indent=2) + "\n"
    (folder / CALIBRATION_FILE).write_text(text, encoding="utf-8")
