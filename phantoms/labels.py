"""The phantom's LLNM label model: a known logistic risk over the paper's risk factors.

Every phantom case gets a *true* probability of lateral lymph node metastasis
from :func:`llnm_probability`, and a binary label drawn from it. Because the
probability is known, so is the best AUC any model can reach on a set of
cases (:func:`best_achievable_auc`): a trained model is judged against that
ceiling, not against 1.0.

The logit is a sum of terms, one per risk factor the paper reports
(Shen et al., Nat Commun 2025; ``reference/METHOD.md``)::

    logit = INTERCEPT
          + 3.0 * sigmoid((2.5 mm - capsule distance) / 0.6 mm)   # paper: > 72 % under 2.5 mm
          + {upper: 0.9, middle: 0.6, lower: 0.0}[region]          # upper, middle high risk
          + 1.1 * min(max(size_mm - 5, 0) / 15, 1.5)               # larger nodules
          + {round: 0, lobulated: 0.35, taller-than-wide: 0.5, irregular: 0.7}[shape]
          + {well-defined: 0, ill-defined: 0.55}[margin]
          + {none: 0, macro: 0.3, micro: 0.9}[calcification]
          + {hyperechoic: -0.3, isoechoic: 0, hypoechoic: 0.3, very hypoechoic: 0.45}[echo]
          + 0.5 * (sex == "M")                                     # sex: the main demographic
          - 0.025 * (age - 45)                                     # younger: higher risk

The location terms dominate, as in the paper's attention analysis (location
48.8 %, morphology 29.9 %, demographics small). The weights are this
generator's choice, not fitted values. The label depends on nothing else: the
report text and the pixels are functions of the same features plus noise, so
no input carries information about the label beyond the true probability.

Risk stage (a synthetic stand-in for the paper's nodal stage 1-3): stage 1
when the probability is below :data:`STAGE_THRESHOLDS` [0] (0.35), stage 3 at
or above [1] (0.70), stage 2 between.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Region = Literal["upper", "middle", "lower"]
Shape = Literal["round", "lobulated", "irregular", "taller-than-wide"]
Margin = Literal["well-defined", "ill-defined"]
Calcification = Literal["none", "micro", "macro"]
Echogenicity = Literal["hyperechoic", "isoechoic", "hypoechoic", "very hypoechoic"]
Sex = Literal["F", "M"]

INTERCEPT = -3.9
CAPSULE_THRESHOLD_MM = 2.5
STAGE_THRESHOLDS = (0.35, 0.70)

_REGION = {"upper": 0.9, "middle": 0.6, "lower": 0.0}
_SHAPE = {"round": 0.0, "lobulated": 0.35, "taller-than-wide": 0.5, "irregular": 0.7}
_MARGIN = {"well-defined": 0.0, "ill-defined": 0.55}
_CALCIFICATION = {"none": 0.0, "macro": 0.3, "micro": 0.9}
_ECHO = {"hyperechoic": -0.3, "isoechoic": 0.0, "hypoechoic": 0.3, "very hypoechoic": 0.45}


@dataclass(frozen=True)
class RiskFactors:
    """What the label model sees: nodule location and morphology, sex, age."""

    capsule_distance_mm: float
    region: Region
    size_mm: float  # largest dimension
    shape: Shape
    margin: Margin
    calcification: Calcification
    echogenicity: Echogenicity
    sex: Sex
    age_years: int


def llnm_logit(factors: RiskFactors) -> float:
    """The log-odds of LLNM under the phantom's model (see the module docstring)."""
    capsule = 1.0 / (1.0 + math.exp((factors.capsule_distance_mm - CAPSULE_THRESHOLD_MM) / 0.6))
    size = min(max(factors.size_mm - 5.0, 0.0) / 15.0, 1.5)
    return (
        INTERCEPT
        + 3.0 * capsule
        + _REGION[factors.region]
        + 1.1 * size
        + _SHAPE[factors.shape]
        + _MARGIN[factors.margin]
        + _CALCIFICATION[factors.calcification]
        + _ECHO[factors.echogenicity]
        + (0.5 if factors.sex == "M" else 0.0)
        - 0.025 * (factors.age_years - 45)
    )


def llnm_probability(factors: RiskFactors) -> float:
    """The true probability of LLNM for these risk factors."""
    return 1.0 / (1.0 + math.exp(-llnm_logit(factors)))


def risk_stage(probability: float) -> int:
    """Risk stage 1-3 from the true probability (thresholds 0.35 and 0.70)."""
    low, high = STAGE_THRESHOLDS
    if probability < low:
        return 1
    return 2 if probability < high else 3


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half).

    Raises
    ------
    ValueError
        If the lengths differ or either class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("the AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


class LabelledCase(Protocol):
    """The two numbers :func:`best_achievable_auc` needs from a case."""

    @property
    def llnm_probability(self) -> float:
        """The true probability."""

    @property
    def llnm_label(self) -> bool:
        """The label sampled from it."""


def best_achievable_auc(cases: Iterable[LabelledCase]) -> float:
    """AUC of the true probabilities against the sampled labels of these cases.

    No model can beat this on the same cases in expectation: it is the score
    of the Bayes-optimal predictor. Accepts any objects with
    ``llnm_probability`` and ``llnm_label`` (such as ``PhantomCase``).
    """
    items = list(cases)
    return roc_auc([c.llnm_probability for c in items], [c.llnm_label for c in items])
