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

Risk stage: the paper's nodal stage, from the metastatic lateral lymph
nodes. A case labelled positive gets them from :func:`sample_nodes`: a
severity (the true logit, shifted so a typical positive is 0, plus its own
normal noise, sd 0.8) sets the node count (1 + Poisson(exp(1 + 0.5
severity))) and the case's median node size (0.4 cm * exp(0.8 severity),
times log-normal noise, sd 0.5); each node varies around it (log-normal, sd
0.6; sizes clipped to 0.05-6 cm). A negative case has no metastatic nodes.
Higher risk thus means more and larger nodes, but the stage carries noise of
its own, so neither it nor the label is a function of the probability.

The paper defines stage 1 as five or fewer micro-metastases (< 0.2 cm),
stage 2 as more than five nodes all < 3 cm, stage 3 as any node > 3 cm. It
leaves gaps; :func:`nodal_stage` closes them with one rule each way:

* stage 3: any node larger than 3 cm (:data:`MACRO_NODE_CM`);
* stage 1: no metastatic node (LLNM negative), or at most five
  (:data:`MAX_MICRO_NODES`) nodes all smaller than 0.2 cm
  (:data:`MICRO_NODE_CM`);
* stage 2: everything else: more than five nodes none over 3 cm, and also
  five or fewer nodes when one of them measures 0.2-3 cm (a node of exactly
  3 cm counts as stage 2, one of exactly 0.2 cm is not micro).

Over the generator's cases about 57 % are stage 1, 36 % stage 2, 7 % stage 3.
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
MICRO_NODE_CM = 0.2  # a micro-metastasis is smaller
MACRO_NODE_CM = 3.0  # any node larger makes stage 3
MAX_MICRO_NODES = 5  # stage 1 allows at most this many micro-metastases
_SEVERITY_SHIFT = 0.9  # the logit of a typical positive case

REGION_LOGIT = {"upper": 0.9, "middle": 0.6, "lower": 0.0}  # the regional risk of the map proof
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
        + REGION_LOGIT[factors.region]
        + 1.1 * size
        + _SHAPE[factors.shape]
        + _MARGIN[factors.margin]
        + _CALCIFICATION[factors.calcification]
        + _ECHO[factors.echogenicity]
        + (0.5 if factors.sex == "M" else 0.0)
        - 0.025 * (factors.age_years - 45)
    )


def llnm_probability(factors: RiskFactors, logit_shift: float = 0.0) -> float:
    """The true probability of LLNM for these risk factors.

    ``logit_shift`` is added to the logit: a population with another prevalence
    (:attr:`phantoms.site_profile.SiteProfile.prevalence_logit_shift`).
    """
    return 1.0 / (1.0 + math.exp(-(llnm_logit(factors) + logit_shift)))


def sample_nodes(logit: float, label: bool, rng: np.random.Generator) -> tuple[float, ...]:
    """The metastatic lateral nodes' sizes in cm (largest dimension); none when ``label`` is False.

    Drawn from the true ``logit`` plus noise of ``rng`` (the module docstring). ``rng`` is
    used only for positive cases.
    """
    if not label:
        return ()
    severity = logit - _SEVERITY_SHIFT + rng.normal(0.0, 0.8)
    count = 1 + int(rng.poisson(math.exp(1.0 + 0.5 * severity)))
    median = math.log(0.4) + 0.8 * severity + rng.normal(0.0, 0.5)
    sizes = np.clip(np.exp(median + rng.normal(0.0, 0.6, count)), 0.05, 6.0)
    return tuple(round(float(size), 3) for size in sizes)


def nodal_stage(node_sizes_cm: Sequence[float]) -> int:
    """Risk stage 1-3 from the metastatic nodes' sizes in cm (rules in the module docstring)."""
    if any(size > MACRO_NODE_CM for size in node_sizes_cm):
        return 3
    micro = all(size < MICRO_NODE_CM for size in node_sizes_cm)
    return 1 if len(node_sizes_cm) <= MAX_MICRO_NODES and micro else 2


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
