"""Risk stage 1-3 of a patient: LLNM-Net's stage head, or banding its LLNM probability.

Two ways to stage a patient:

* ``head``: the stage head of TMDL (its softmax over stages 1-3; the stage is the argmax);
* ``banding``: the LLNM probability cut at two points: stage 1 below the lower,
  stage 3 at or above the upper, stage 2 between.

Training decides which one a model serves (:func:`choose_method`): on the
validation cases with a known stage it fits the cut-points that maximise exact
agreement (:func:`fit_cut_points`), scores the head's exact agreement, and the
banding's *cross-fitted* agreement (cut-points fitted on one half of the
validation cases and scored on the other, both ways, so banding's two free
parameters are not scored on the cases they were fitted on). Banding is served
only when its cross-fitted agreement is higher; a tie keeps the head. The
decision lands in the run's ``metrics.json`` as ``risk_stage`` (``method`` and
``cut_points``, fitted on all validation cases), from there in a bundle's
manifest (``metrics.llnm.risk_stage``), and :class:`StageMethod` reads it back.

For one-vs-rest AUCs, banding's score for each stage is the LLNM probability
read towards that stage: ``1 - p`` for stage 1, ``p`` for stage 3 and
``-|p - m|`` for stage 2, ``m`` the middle of the stage 2 band.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.llnm.evaluation import one_vs_rest_auc

STAGES = 3
Method = Literal["head", "banding"]
CutPoints = tuple[float, float]


@dataclass(frozen=True)
class StageMethod:
    """How a model turns its outputs into the risk stage it reports.

    Raises
    ------
    ValueError
        If banding lacks ordered cut-points in [0, 1], or the method is unknown.
    """

    method: Method = "head"
    cut_points: CutPoints | None = None  # banding: (lower, upper)

    def __post_init__(self) -> None:
        if self.method not in ("head", "banding"):
            raise ValueError(f"unknown risk stage method {self.method!r}")
        if self.method == "banding" and (
            self.cut_points is None or not 0.0 <= self.cut_points[0] <= self.cut_points[1] <= 1.0
        ):
            raise ValueError(f"banding needs cut-points 0 <= lower <= upper <= 1: {self}")

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> StageMethod:
        """The method a run's metrics (or a manifest's ``metrics.llnm``) record; head if none."""
        record = metrics.get("risk_stage") or {}
        if record.get("method", "head") == "head":
            return cls()
        low, high = record["cut_points"]
        return cls("banding", (float(low), float(high)))

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., "cut_points": [lower, upper] or None}``."""
        points = None if self.cut_points is None else list(self.cut_points)
        return {"method": self.method, "cut_points": points if self.method == "banding" else None}

    def stage(
        self, probability: float, stage_probabilities: ArrayLike
    ) -> tuple[int, tuple[float, ...]]:
        """The stage 1-3 and the stage probabilities to report (none for banding)."""
        if self.method == "banding" and self.cut_points is not None:
            return int(band(np.array([probability]), self.cut_points)[0]), ()
        head = np.asarray(stage_probabilities, dtype=np.float64)
        return int(head.argmax()) + 1, tuple(float(p) for p in head)


def band(probabilities: ArrayLike, cut_points: CutPoints) -> NDArray[np.int64]:
    """Stage 1 below the lower cut-point, 3 at or above the upper, 2 between."""
    p = np.asarray(probabilities, dtype=np.float64)
    low, high = cut_points
    return np.where(p < low, 1, np.where(p < high, 2, 3)).astype(np.int64)


def exact_agreement(stages: ArrayLike, predicted: ArrayLike) -> float:
    """The share of cases whose predicted stage is their stage."""
    truth, guess = np.asarray(stages), np.asarray(predicted)
    return float((truth == guess).mean())


def fit_cut_points(stages: ArrayLike, probabilities: ArrayLike) -> CutPoints:
    """The two cut-points that maximise exact agreement of :func:`band` with ``stages``.

    Candidates are 0, 1 and the midpoints between neighbouring distinct
    probabilities; of equally good pairs the lowest is taken.

    Raises
    ------
    ValueError
        If there are no cases or a stage lies outside 1-3.
    """
    truth = np.asarray(stages)
    p = np.asarray(probabilities, dtype=np.float64)
    if truth.size == 0 or truth.shape != p.shape or not np.isin(truth, (1, 2, 3)).all():
        raise ValueError("need as many stages (1-3) as probabilities, at least one")
    distinct = np.unique(p)
    candidates = np.concatenate(([0.0], (distinct[1:] + distinct[:-1]) / 2, [1.0]))

    def below(stage: int) -> NDArray[np.int64]:
        """How many cases of ``stage`` lie below each candidate."""
        return np.searchsorted(np.sort(p[truth == stage]), candidates, side="left")

    one, two, three = below(1), below(2), below(3)
    # agreement(i <= j) = one[i] + two[j] - two[i] + (n3 - three[j]) = f[i] + g[j] + n3
    f, g = one - two, two - three
    best_f = np.maximum.accumulate(f)
    j = int(np.argmax(best_f + g))
    i = int(np.argmax(f[: j + 1]))
    return float(candidates[i]), float(candidates[j])


def cross_fitted_agreement(stages: ArrayLike, probabilities: ArrayLike) -> float:
    """Banding's exact agreement with cut-points fitted on the other half of the cases.

    The halves are the even and the odd positions; each is scored with the
    cut-points fitted on the other. Needs at least two cases.
    """
    truth = np.asarray(stages)
    p = np.asarray(probabilities, dtype=np.float64)
    halves = (np.arange(truth.size) % 2 == 0, np.arange(truth.size) % 2 == 1)
    correct = 0
    for fit, score in (halves, halves[::-1]):
        cuts = fit_cut_points(truth[fit], p[fit])
        correct += int((band(p[score], cuts) == truth[score]).sum())
    return correct / truth.size


def banding_scores(probabilities: ArrayLike, cut_points: CutPoints) -> NDArray[np.float64]:
    """Per-stage scores (N, 3) of banding for one-vs-rest AUCs (module docstring)."""
    p = np.asarray(probabilities, dtype=np.float64)
    middle = (cut_points[0] + cut_points[1]) / 2
    return np.stack([1.0 - p, -np.abs(p - middle), p], axis=1)


def compare_methods(
    stages: ArrayLike,
    probabilities: ArrayLike,
    stage_probabilities: ArrayLike,
    cut_points: CutPoints,
) -> dict[str, Any]:
    """One-vs-rest AUCs per stage and exact agreement of the head and of banding.

    Cases whose stage is unknown (0) are left out; ``cases`` counts the rest.
    """
    truth = np.asarray(stages)
    known = truth > 0
    truth = truth[known]
    p = np.asarray(probabilities, dtype=np.float64)[known]
    head = np.asarray(stage_probabilities, dtype=np.float64)[known]
    return {
        "cases": int(known.sum()),
        "stage_counts": {str(k): int((truth == k).sum()) for k in range(1, STAGES + 1)},
        "head": {
            "exact_agreement": exact_agreement(truth, head.argmax(axis=1) + 1),
            "auc": one_vs_rest_auc(truth, head),
        },
        "banding": {
            "cut_points": list(cut_points),
            "exact_agreement": exact_agreement(truth, band(p, cut_points)),
            "auc": one_vs_rest_auc(truth, banding_scores(p, cut_points)),
        },
    }


def choose_method(
    stages: ArrayLike, probabilities: ArrayLike, stage_probabilities: ArrayLike
) -> dict[str, Any]:
    """The ``risk_stage`` record of a run from its validation cases (module docstring).

    Without at least two validation cases of known stage the head is kept and
    ``validation`` is None.
    """
    truth = np.asarray(stages)
    known = truth > 0
    if known.sum() < 2:
        return {**StageMethod().to_dict(), "validation": None}
    p = np.asarray(probabilities, dtype=np.float64)[known]
    head = np.asarray(stage_probabilities, dtype=np.float64)[known]
    cuts = fit_cut_points(truth[known], p)
    comparison = compare_methods(truth[known], p, head, cuts)
    crossed = cross_fitted_agreement(truth[known], p)
    banding = crossed > comparison["head"]["exact_agreement"]
    method = StageMethod("banding", cuts) if banding else StageMethod()
    return {
        **method.to_dict(),
        "fitted_cut_points": list(cuts),
        "selected_on": "validation exact agreement (banding cross-fitted over two halves)",
        "validation": {**comparison, "banding_cross_fitted_agreement": crossed},
    }
