"""LLNM evaluation metrics against scikit-learn and hand-computed values, and the PNG plots."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from models.llnm.evaluation import (
    METRICS,
    Estimate,
    _resample_counts,
    binary_metrics,
    bootstrap,
    calibration_bins,
    calibration_error_against_risk,
    expected_calibration_error,
    net_benefit,
    roc_auc,
    roc_curve,
    stage_auc,
)
from models.llnm.evaluation_plots import plot_calibration, plot_decision_curve, plot_roc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scored(
    size: int, seed: int, separation: float = 0.3
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Random labels and probabilities rounded to 0.05, so there are many ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    scores = np.clip(0.35 + separation * labels + rng.normal(0.0, 0.25, size), 0.0, 1.0)
    return labels, np.round(scores * 20) / 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_curve_match_sklearn_with_ties(seed: int) -> None:
    labels, scores = _scored(300, seed)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    assert thresholds[0] == np.inf
    assert (np.diff(thresholds) < 0).all()


def test_roc_auc_hand_computed_tie() -> None:
    # pairs (pos, neg): (0.8, 0.2) win, (0.8, 0.5) win, (0.5, 0.2) win, (0.5, 0.5) tie -> 3.5 / 4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("labels", "scores"),
    [([1, 1, 1], [0.1, 0.2, 0.3]), ([0, 1], [0.1, 0.2, 0.3]), ([0, 1], [0.1, math.nan])],
    ids=["one-class", "length", "nan"],
)
def test_roc_rejects_bad_input(labels: list[int], scores: list[float]) -> None:
    with pytest.raises(ValueError):
        roc_auc(labels, scores)
    with pytest.raises(ValueError):
        roc_curve(labels, scores)


def test_binary_metrics_hand_computed() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    probabilities = [0.9, 0.6, 0.3, 0.5, 0.4, 0.2, 0.1, 0.05]
    # threshold 0.5 (inclusive): TP 2, FN 1, FP 1 (0.5), TN 4
    metrics = binary_metrics(labels, probabilities)
    assert tuple(metrics) == METRICS
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == pytest.approx(4 / 5)
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["ppv"] == pytest.approx(2 / 3)
    assert metrics["npv"] == pytest.approx(4 / 5)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probabilities))


def test_binary_metrics_zero_denominator_is_nan() -> None:
    metrics = binary_metrics(
        [1, 0, 0], [0.2, 0.1, 0.3], threshold=0.9
    )  # nothing predicted positive
    assert math.isnan(metrics["ppv"])
    assert metrics["sensitivity"] == 0.0
    assert metrics["npv"] == pytest.approx(2 / 3)
    assert math.isnan(binary_metrics([0, 0], [0.2, 0.7])["auc"])  # single class


def test_binary_metrics_rejects_probabilities_outside_unit_interval() -> None:
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.2, 1.5])


def test_bootstrap_reproducible_and_contains_point_estimate() -> None:
    labels, scores = _scored(200, 3)
    first = bootstrap(labels, scores, resamples=200, seed=7)
    assert first == bootstrap(labels, scores, resamples=200, seed=7)
    assert first != bootstrap(labels, scores, resamples=200, seed=8)
    assert set(first) == set(METRICS)
    for name, estimate in first.items():
        assert estimate.low <= estimate.value <= estimate.high, name
        assert estimate.value == pytest.approx(binary_metrics(labels, scores)[name])
    assert first["auc"].to_dict() == {
        "value": first["auc"].value,
        "low": first["auc"].low,
        "high": first["auc"].high,
    }


def test_bootstrap_interval_narrower_with_more_data() -> None:
    small = bootstrap(*_scored(100, 4), resamples=300)
    large = bootstrap(*_scored(1600, 4), resamples=300)
    for name in METRICS:
        assert large[name].high - large[name].low < small[name].high - small[name].low, name


def test_bootstrap_redraws_single_class_resamples() -> None:
    labels = np.zeros(20, dtype=bool)
    labels[0] = True  # a resample misses the only positive with probability (19/20)^20 = 0.36
    counts = _resample_counts(np.random.default_rng(0), labels, 500)
    assert counts.shape == (500, 20)
    assert (counts.sum(axis=1) == 20).all()
    assert (counts[:, 0] > 0).all()
    probabilities = np.linspace(0.9, 0.0, 20)
    for seed in range(
        10
    ):  # one resample: skipping instead of redrawing would give NaN ~36% of runs
        estimate = bootstrap(labels, probabilities, resamples=1, seed=seed)["auc"]
        assert estimate.low == estimate.high == 1.0


def test_bootstrap_rejects_bad_arguments() -> None:
    labels, scores = _scored(50, 5)
    with pytest.raises(ValueError):
        bootstrap(labels, scores, resamples=0)
    with pytest.raises(ValueError):
        bootstrap(labels, scores, level=1.0)
    with pytest.raises(ValueError):
        bootstrap(np.ones(5), np.full(5, 0.5))


def test_estimate_is_frozen() -> None:
    estimate = Estimate(0.8, 0.7, 0.9)
    with pytest.raises(AttributeError):
        estimate.value = 0.5  # type: ignore[misc]


def test_stage_auc_perfect() -> None:
    stages = np.array([1, 2, 3, 1, 2, 3])
    probabilities = np.eye(3)[stages - 1] * 0.8 + 0.2 / 3
    result = stage_auc(stages, probabilities)
    assert result == {"stage_1": 1.0, "stage_2": 1.0, "stage_3": 1.0, "mean": 1.0}


def test_stage_auc_random_matches_sklearn_one_vs_rest() -> None:
    rng = np.random.default_rng(6)
    stages = rng.integers(1, 4, 150)
    probabilities = rng.dirichlet(np.ones(3), 150)
    result = stage_auc(stages, probabilities)
    for k in (1, 2, 3):
        reference = roc_auc_score(stages == k, probabilities[:, k - 1])
        assert result[f"stage_{k}"] == pytest.approx(reference)
    macro = roc_auc_score(stages, probabilities, multi_class="ovr", average="macro")
    assert result["mean"] == pytest.approx(macro)


def test_stage_auc_missing_stage_is_nan_and_excluded() -> None:
    stages = np.array([1, 2, 1, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1]])
    result = stage_auc(stages, probabilities)
    assert math.isnan(result["stage_3"])
    assert result["mean"] == pytest.approx((result["stage_1"] + result["stage_2"]) / 2)
    with pytest.raises(ValueError):
        stage_auc(stages, probabilities * 2)  # rows do not sum to 1
    with pytest.raises(ValueError):
        stage_auc(np.array([1, 4, 1, 2]), probabilities)  # stage outside 1..K


def test_calibration_perfect_and_miscalibrated() -> None:
    rng = np.random.default_rng(8)
    probabilities = rng.uniform(0.0, 1.0, 20000)
    labels = rng.uniform(0.0, 1.0, 20000) < probabilities  # calibrated by construction
    table = calibration_bins(labels, probabilities)
    observed, predicted = calibration_curve(labels, probabilities, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(table["observed"], observed)
    np.testing.assert_allclose(table["mean_predicted"], predicted)
    assert table["count"].sum() == 20000
    assert expected_calibration_error(labels, probabilities) < 0.02
    overconfident = np.where(probabilities > 0.5, 1.0, 0.0)  # says 0 or 1 for everything
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_calibration_bins_drop_empty_bins() -> None:
    table = calibration_bins([0, 1, 1, 0], [0.05, 0.95, 1.0, 0.1], bins=10)
    np.testing.assert_array_equal(table["count"], [1, 1, 2])
    np.testing.assert_allclose(table["mean_predicted"], [0.05, 0.1, 0.975])
    np.testing.assert_allclose(table["observed"], [0.0, 0.0, 1.0])
    # |0 - 0.05| * 1 + |0 - 0.1| * 1 + |1 - 0.975| * 2, over 4 cases
    assert expected_calibration_error([0, 1, 1, 0], [0.05, 0.95, 1.0, 0.1]) == pytest.approx(
        0.2 / 4
    )


def test_calibration_error_against_risk_sees_through_label_noise() -> None:
    rng = np.random.default_rng(9)
    risk = rng.uniform(0.05, 0.95, 100)
    labels = rng.uniform(0.0, 1.0, 100) < risk
    # On 100 cases the labels alone put a perfectly calibrated model's error near 0.09 ...
    assert expected_calibration_error(labels, risk) > 0.04
    # ... the known risk puts it at 0, and a shifted model at its shift.
    assert calibration_error_against_risk(risk, risk) == pytest.approx(0.0, abs=1e-12)
    shifted = np.clip(risk - 0.1, 0.0, 1.0)
    assert calibration_error_against_risk(risk, shifted) == pytest.approx(0.1, abs=0.005)
    # Hand-computed: bins [0, 0.1) and [0.9, 1]: |0.3 - 0.05| * 2 + |0.8 - 0.95| * 1, over 3.
    assert calibration_error_against_risk([0.2, 0.4, 0.8], [0.05, 0.05, 0.95]) == pytest.approx(
        (0.25 * 2 + 0.15) / 3
    )
    with pytest.raises(ValueError, match="risks"):
        calibration_error_against_risk([0.2, 1.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="expected 2 scores"):
        calibration_error_against_risk([0.2, 0.3], [0.1])


def test_net_benefit_hand_computed() -> None:
    labels = [1, 1, 0, 0, 0]
    probabilities = [0.9, 0.3, 0.6, 0.2, 0.1]
    result = net_benefit(labels, probabilities, [0.25, 0.5])
    # t = 0.25: treat 0.9, 0.3, 0.6 -> TP 2, FP 1: 2/5 - 1/5 * 1/3
    # t = 0.5: treat 0.9, 0.6 -> TP 1, FP 1: 1/5 - 1/5 * 1
    np.testing.assert_allclose(result["model"], [2 / 5 - 1 / 15, 0.0])
    prevalence = 2 / 5
    odds = np.array([1 / 3, 1.0])
    np.testing.assert_allclose(result["treat_all"], prevalence - (1 - prevalence) * odds)
    np.testing.assert_array_equal(result["treat_none"], [0.0, 0.0])
    np.testing.assert_array_equal(result["threshold"], [0.25, 0.5])
    with pytest.raises(ValueError):
        net_benefit(labels, probabilities, [0.0, 0.5])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plots_write_png(tmp_path: Path) -> None:
    labels, scores = _scored(200, 9)
    roc = plot_roc(
        tmp_path / "roc.png",
        {"LLNM-Net": (labels, scores), "flipped": (labels, 1.0 - scores)},
        "ROC",
        reference_auc=0.85,
    )
    calibration = plot_calibration(tmp_path / "calibration.png", labels, scores, "calibration")
    decision = plot_decision_curve(tmp_path / "decision.png", labels, scores, "decision curve")
    for path in (roc, calibration, decision):
        assert path.is_file()
        assert _png_size(path) == (600, 500)


def test_plots_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_roc(tmp_path / "roc.png", {}, "ROC")
    with pytest.raises(ValueError):
        plot_roc(tmp_path / "roc.png", {"one class": ([1, 1], [0.2, 0.3])}, "ROC")
    with pytest.raises(ValueError):
        plot_calibration(tmp_path / "calibration.png", [0, 1], [0.2, 1.3], "calibration")
    with pytest.raises(ValueError):
        plot_decision_curve(tmp_path / "decision.png", [0, 1, 2], [0.1, 0.2, 0.3], "decision")
    assert not list(tmp_path.iterdir())
