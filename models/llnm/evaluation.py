"""Discrimination, calibration and decision-curve metrics of LLNM predictions, with bootstrap CIs.

Labels are 0/1 (1 = lateral lymph node metastasis); predictions are probabilities of the positive
class. Only numpy is used, so these functions run anywhere the node runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rich.progress import track

METRICS: tuple[str, ...] = ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")

_CHUNK = 100  # bootstrap resamples evaluated together; fixed so results depend only on the seed


def _labels(labels: ArrayLike) -> NDArray[np.bool_]:
    """Validated 1-D, non-empty 0/1 labels as booleans."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return array.astype(bool)


def _scores(scores: ArrayLike, size: int, probabilities: bool) -> NDArray[np.float64]:
    """Validated 1-D float scores of length ``size``; in [0, 1] when ``probabilities``."""
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (size,):
        raise ValueError(f"expected {size} scores matching the labels, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("scores must not be NaN")
    if probabilities and ((array < 0.0) | (array > 1.0)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return array


def _ratio(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> NDArray[np.float64]:
    """Element-wise ``numerator / denominator`` with NaN where the denominator is zero."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.nan)


class _RankedScores:
    """Scores sorted once, so AUCs of many weightings (bootstrap counts) are cheap."""

    def __init__(self, labels: NDArray[np.bool_], scores: NDArray[np.float64]) -> None:
        self.order = np.argsort(scores, kind="stable")
        ordered = scores[self.order]
        self.positive = labels[self.order]
        # first index of every run of equal scores
        self.starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))

    def auc(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """Mann-Whitney AUC (ties count half) per row of ``weights`` (R, N); NaN for one class."""
        ordered = weights[:, self.order]  # (R, N)
        positive = np.add.reduceat(ordered * self.positive, self.starts, axis=1)  # (R, G)
        negative = np.add.reduceat(ordered * ~self.positive, self.starts, axis=1)  # (R, G)
        below = np.cumsum(negative, axis=1) - negative  # negatives with strictly lower score
        wins = (positive * (below + 0.5 * negative)).sum(axis=1)  # (R,)
        return _ratio(wins, positive.sum(axis=1) * negative.sum(axis=1))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted half.

    Raises
    ------
    ValueError
        If only one class is present, the lengths differ, or a score is NaN.
    """
    truth = _labels(labels)
    values = _scores(scores, truth.size, probabilities=False)
    if truth.all() or not truth.any():
        raise ValueError("AUC needs both positive and negative labels")
    return float(_RankedScores(truth, values).auc(np.ones((1, truth.size)))[0])


def roc_curve(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """False and true positive rates at every distinct score, like sklearn without dropping points.

    Returns
    -------
    fpr, tpr, thresholds
        Thresholds descend from ``+inf`` (nothing positive) through each distinct score;
        a sample is positive at a threshold when its score is >= it.

    Raises
    ------
    ValueError
        If only one class is present, the lengths differ, or a score is NaN.
    """
    truth = _labels(labels)
    values = _scores(scores, truth.size, probabilities=False)
    if truth.all() or not truth.any():
        raise ValueError("a ROC curve needs both positive and negative labels")
    order = np.argsort(-values, kind="stable")
    descending = values[order]
    last = np.concatenate((np.flatnonzero(descending[1:] != descending[:-1]), [truth.size - 1]))
    true_positives = np.cumsum(truth[order])[last]
    false_positives = last + 1 - true_positives
    fpr = np.concatenate(([0.0], false_positives / false_positives[-1]))
    tpr = np.concatenate(([0.0], true_positives / true_positives[-1]))
    thresholds = np.concatenate(([np.inf], descending[last]))
    return fpr, tpr, thresholds


def _confusion_metrics(
    counts: NDArray[np.float64],
    truth: NDArray[np.bool_],
    predicted: NDArray[np.bool_],
    ranked: _RankedScores,
) -> dict[str, NDArray[np.float64]]:
    """Every metric in METRICS per row of sample weights ``counts`` (R, N)."""
    tp = counts @ (truth & predicted).astype(np.float64)
    fp = counts @ (~truth & predicted).astype(np.float64)
    fn = counts @ (truth & ~predicted).astype(np.float64)
    tn = counts @ (~truth & ~predicted).astype(np.float64)
    return {
        "auc": ranked.auc(counts),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def binary_metrics(
    labels: ArrayLike, probabilities: ArrayLike, threshold: float = 0.5
) -> dict[str, float]:
    """AUC and confusion-matrix metrics; a case is predicted positive when probability >= threshold.

    A ratio whose denominator is zero (e.g. PPV with no predicted positives, or AUC with a single
    class) is NaN rather than an error, so a small validation split never aborts a report.

    Raises
    ------
    ValueError
        If labels are not 0/1, the lengths differ, or probabilities are NaN or outside [0, 1].
    """
    truth = _labels(labels)
    values = _scores(probabilities, truth.size, probabilities=True)
    ones = np.ones((1, truth.size))
    metrics = _confusion_metrics(ones, truth, values >= threshold, _RankedScores(truth, values))
    return {name: float(metrics[name][0]) for name in METRICS}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its (percentile bootstrap) confidence interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """``{"value": .., "low": .., "high": ..}`` for JSON reports."""
        return asdict(self)


def _resample_counts(
    rng: np.random.Generator, truth: NDArray[np.bool_], resamples: int
) -> NDArray[np.float64]:
    """How often each patient is drawn, per resample (R, N); one-class resamples are redrawn."""
    size = truth.size
    indices = rng.integers(0, size, (resamples, size))
    while True:
        positives = truth[indices].sum(axis=1)
        invalid = np.flatnonzero((positives == 0) | (positives == size))
        if invalid.size == 0:
            break
        indices[invalid] = rng.integers(0, size, (invalid.size, size))
    offsets = (np.arange(resamples) * size)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=resamples * size)
    return counts.reshape(resamples, size).astype(np.float64)


def _percentile(values: NDArray[np.float64], percent: float) -> float:
    """Percentile ignoring NaN; NaN (without a warning) when every value is NaN."""
    finite = values[~np.isnan(values)]
    return float(np.percentile(finite, percent)) if finite.size else float("nan")


def _nanmean(values: NDArray[np.float64]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def bootstrap(
    labels: ArrayLike,
    probabilities: ArrayLike,
    threshold: float = 0.5,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = False,
) -> dict[str, Estimate]:
    """Every metric in METRICS with a percentile confidence interval from a patient bootstrap.

    Patients are drawn with replacement; a resample holding a single class is redrawn, so exactly
    ``resamples`` resamples enter every interval (including AUC's). Other NaN values (e.g. PPV of a
    resample without predicted positives) are ignored by the percentiles. Resamples are computed in
    fixed chunks, so the result depends only on the data and ``seed``.

    Raises
    ------
    ValueError
        On invalid labels or probabilities, a single class, ``resamples`` < 1 or ``level``
        outside (0, 1).
    """
    truth = _labels(labels)
    values = _scores(probabilities, truth.size, probabilities=True)
    if truth.all() or not truth.any():
        raise ValueError("bootstrap needs both positive and negative labels")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    ranked = _RankedScores(truth, values)
    predicted = values >= threshold
    chunks = [min(_CHUNK, resamples - start) for start in range(0, resamples, _CHUNK)]
    parts: dict[str, list[NDArray[np.float64]]] = {name: [] for name in METRICS}
    for chunk in track(chunks, "bootstrap", disable=not progress, transient=True):
        metrics = _confusion_metrics(_resample_counts(rng, truth, chunk), truth, predicted, ranked)
        for name in METRICS:
            parts[name].append(metrics[name])
    point = binary_metrics(truth, values, threshold)
    tail = 50.0 * (1.0 - level)
    estimates = {}
    for name in METRICS:
        samples = np.concatenate(parts[name])
        estimates[name] = Estimate(
            value=point[name],
            low=_percentile(samples, tail),
            high=_percentile(samples, 100.0 - tail),
        )
    return estimates


def stage_auc(stages: ArrayLike, stage_probabilities: ArrayLike) -> dict[str, float]:
    """One-vs-rest AUC per stage (``"stage_1"`` .. ``"stage_K"``) and their ``"mean"``.

    A stage without positives or without negatives gets NaN and is left out of the mean
    (NaN when no stage has an AUC).

    Raises
    ------
    ValueError
        If ``stage_probabilities`` is not (N, K) with finite rows summing to 1, or a stage
        lies outside 1..K.
    """
    stage = np.asarray(stages)
    probabilities = np.asarray(stage_probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or stage.shape != (probabilities.shape[0],) or stage.size == 0:
        raise ValueError(
            f"need stages (N,) and stage_probabilities (N, K), got {stage.shape} and "
            f"{probabilities.shape}"
        )
    classes = probabilities.shape[1]
    if not np.isin(stage, np.arange(1, classes + 1)).all():
        raise ValueError(f"stages must be integers in 1..{classes}")
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1.0):
        raise ValueError("each row of stage_probabilities must be finite and sum to 1")
    return one_vs_rest_auc(stage, probabilities)


def one_vs_rest_auc(stages: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """One-vs-rest AUC of stage k against score column k-1, and their ``"mean"``.

    ``scores`` (N, K) may be any per-stage scores (higher: more likely that
    stage). A stage without positives or without negatives gets NaN and is
    left out of the mean (NaN when no stage has an AUC).

    Raises
    ------
    ValueError
        If the shapes do not match or a score is NaN.
    """
    stage = np.asarray(stages)
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or stage.shape != (values.shape[0],):
        raise ValueError(f"need stages (N,) and scores (N, K), got {stage.shape}, {values.shape}")
    result = {}
    for k in range(1, values.shape[1] + 1):
        member = stage == k
        both = member.any() and not member.all()
        result[f"stage_{k}"] = roc_auc(member, values[:, k - 1]) if both else float("nan")
    result["mean"] = _nanmean(np.array(list(result.values())))
    return result


def calibration_bins(
    labels: ArrayLike, probabilities: ArrayLike, bins: int = 10
) -> dict[str, NDArray[np.float64] | NDArray[np.int64]]:
    """Reliability-diagram points over ``bins`` equal-width bins of [0, 1]; empty bins dropped.

    Bin edges match sklearn's ``calibration_curve(strategy="uniform")``: a probability on an
    inner edge belongs to the upper bin, and 1.0 to the last bin.

    Returns
    -------
    dict
        ``"mean_predicted"`` and ``"observed"`` (fraction positive) per non-empty bin, and
        ``"count"``, the number of cases in it.

    Raises
    ------
    ValueError
        On invalid labels or probabilities, or ``bins`` < 1.
    """
    truth = _labels(labels)
    return _binned(truth.astype(np.float64), _scores(probabilities, truth.size, True), bins)


def _binned(
    outcomes: NDArray[np.float64], values: NDArray[np.float64], bins: int
) -> dict[str, NDArray[np.float64] | NDArray[np.int64]]:
    """:func:`calibration_bins` of ``values`` against ``outcomes`` (labels or their risk)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    index = np.searchsorted(inner_edges, values, side="right")
    count = np.bincount(index, minlength=bins)
    kept = count > 0
    predicted_sum = np.bincount(index, weights=values, minlength=bins)
    outcome_sum = np.bincount(index, weights=outcomes, minlength=bins)
    return {
        "mean_predicted": predicted_sum[kept] / count[kept],
        "observed": outcome_sum[kept] / count[kept],
        "count": count[kept].astype(np.int64),
    }


def expected_calibration_error(
    labels: ArrayLike, probabilities: ArrayLike, bins: int = 10
) -> float:
    """Count-weighted mean of |observed - mean predicted| over the equal-width calibration bins.

    Raises
    ------
    ValueError
        On invalid labels or probabilities, or ``bins`` < 1.
    """
    return _binned_error(calibration_bins(labels, probabilities, bins))


def _binned_error(table: dict[str, NDArray[np.float64] | NDArray[np.int64]]) -> float:
    count = table["count"]
    gap = np.abs(table["observed"] - table["mean_predicted"])
    return float((gap * count).sum() / count.sum())


def calibration_error_against_risk(
    risks: ArrayLike, probabilities: ArrayLike, bins: int = 10
) -> float:
    """The expected calibration error with each case's true outcome probability as its outcome.

    Where the probability of each case's outcome is known (a simulation: the phantom
    generator's risk of the recorded label), this measures the model's calibration on the
    cases without the Bernoulli noise of their 0/1 labels, which on 100 cases alone gives
    a perfectly calibrated model an error of about 0.09 (:func:`calibration_error_if_calibrated`).

    Raises
    ------
    ValueError
        On risks or probabilities that are not 1-D values in [0, 1] of the same length, or
        ``bins`` < 1.
    """
    risk = np.asarray(risks, dtype=np.float64)
    if risk.ndim != 1 or risk.size == 0 or not ((risk >= 0) & (risk <= 1)).all():
        raise ValueError("risks must be a non-empty 1-D array of values in [0, 1]")
    return _binned_error(_binned(risk, _scores(probabilities, risk.size, True), bins))


def calibration_error_if_calibrated(
    probabilities: ArrayLike, bins: int = 10, draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """The calibration error a perfectly calibrated model would show on these cases.

    Labels are drawn ``draws`` times as Bernoulli(probability) and the expected
    calibration error computed each time: its median and 95 % range are what
    sampling alone gives with this many cases (on 100 cases and 10 bins, about
    0.09, 95 % range 0.05-0.16), the yardstick for an observed error.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    rng = np.random.default_rng(seed)
    errors = [expected_calibration_error(rng.random(p.size) < p, p, bins) for _ in range(draws)]
    low, median, high = np.percentile(errors, [2.5, 50, 97.5])
    return {"median": float(median), "low": float(low), "high": float(high)}


def net_benefit(
    labels: ArrayLike, probabilities: ArrayLike, thresholds: ArrayLike
) -> dict[str, NDArray[np.float64]]:
    """Decision-curve analysis: net benefit TP/n - FP/n * t / (1 - t) at each threshold t.

    Returns
    -------
    dict
        ``"threshold"``, ``"model"`` (treat when probability >= t), ``"treat_all"`` and
        ``"treat_none"`` (zeros), each with one value per threshold.

    Raises
    ------
    ValueError
        On invalid labels or probabilities, or thresholds that are empty, not 1-D or outside
        (0, 1).
    """
    truth = _labels(labels)
    values = _scores(probabilities, truth.size, probabilities=True)
    threshold = np.asarray(thresholds, dtype=np.float64)
    if threshold.ndim != 1 or threshold.size == 0 or not ((threshold > 0) & (threshold < 1)).all():
        raise ValueError("thresholds must be a non-empty 1-D array of values in (0, 1)")
    size = truth.size
    odds = threshold / (1.0 - threshold)
    positive = np.sort(values[truth])
    negative = np.sort(values[~truth])
    true_positives = positive.size - np.searchsorted(positive, threshold, side="left")
    false_positives = negative.size - np.searchsorted(negative, threshold, side="left")
    return {
        "threshold": threshold,
        "model": true_positives / size - false_positives / size * odds,
        "treat_all": positive.size / size - negative.size / size * odds,
        "treat_none": np.zeros_like(threshold),
    }
