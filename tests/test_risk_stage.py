"""Risk stage: banding the LLNM probability against the stage head, and which one a model serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.bundle import reseal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.risk_stage import (
    StageMethod,
    band,
    choose_method,
    compare_methods,
    cross_fitted_agreement,
    fit_cut_points,
)
from phantoms import make_case
from pipeline.infer import load_llnm
from pipeline.offline import OfflineModels, run_study, write_study


def _one_hot(
    stages: NDArray[np.int64], noise: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Stage probabilities peaked at ``stages`` (rows sum to 1)."""
    scores = np.eye(3)[stages - 1] + rng.uniform(0, noise, (stages.size, 3))
    return np.asarray(scores / scores.sum(axis=1, keepdims=True), dtype=np.float64)


def test_band_and_fitted_cut_points_recover_separable_stages() -> None:
    rng = np.random.default_rng(0)
    probabilities = np.concatenate([rng.uniform(0, 0.3, 40), rng.uniform(0.4, 0.6, 30),
                                    rng.uniform(0.8, 1.0, 10)])  # fmt: skip
    stages = np.repeat([1, 2, 3], [40, 30, 10])
    low, high = fit_cut_points(stages, probabilities)
    assert 0.3 <= low <= 0.4 and 0.6 <= high <= 0.8
    assert (band(probabilities, (low, high)) == stages).all()
    assert band([0.2, 0.3, 0.69, 0.7], (0.3, 0.7)).tolist() == [1, 2, 2, 3]
    assert cross_fitted_agreement(stages, probabilities) > 0.95
    # A stage the probability does not order cannot be banded well.
    shuffled = rng.permutation(stages)
    assert cross_fitted_agreement(shuffled, probabilities) < 0.7


def test_compare_methods_reports_both_and_leaves_unknown_stages_out() -> None:
    rng = np.random.default_rng(1)
    stages = np.repeat([1, 2, 3, 0], [30, 20, 10, 5])
    probabilities = rng.uniform(0, 1, stages.size)
    head = _one_hot(np.where(stages == 0, 1, stages), 0.2, rng)
    result = compare_methods(stages, probabilities, head, (0.3, 0.7))
    assert result["cases"] == 60 and result["stage_counts"] == {"1": 30, "2": 20, "3": 10}
    assert result["head"]["exact_agreement"] == 1.0 and result["head"]["auc"]["mean"] == 1.0
    assert 0.2 < result["banding"]["auc"]["mean"] < 0.8  # random probabilities
    assert result["banding"]["cut_points"] == [0.3, 0.7]


def test_training_serves_whichever_method_agrees_better_on_validation() -> None:
    rng = np.random.default_rng(2)
    stages = np.repeat([1, 2, 3], [50, 30, 20])
    ordered = np.sort(rng.uniform(0, 1, 100))  # the probability orders the stages perfectly
    useless_head = _one_hot(rng.integers(1, 4, 100), 0.5, rng)
    chosen = choose_method(stages, ordered, useless_head)
    assert chosen["method"] == "banding" and chosen["cut_points"] == chosen["fitted_cut_points"]
    assert chosen["validation"]["banding_cross_fitted_agreement"] > 0.9
    served = StageMethod.from_metrics({"risk_stage": chosen})
    assert (band(ordered, served.cut_points or (0, 0)) == stages).all()

    perfect_head = _one_hot(stages, 0.2, rng)
    kept = choose_method(stages, rng.permutation(ordered), perfect_head)
    assert kept["method"] == "head" and kept["cut_points"] is None
    assert StageMethod.from_metrics({"risk_stage": kept}) == StageMethod()
    assert choose_method(np.zeros(10, np.int64), ordered[:10], perfect_head[:10])["method"] == (
        "head"
    )
    assert StageMethod.from_metrics({}) == StageMethod()


def test_stage_method_reports_the_head_or_the_band() -> None:
    head = [0.2, 0.5, 0.3]
    assert StageMethod().stage(0.9, head) == (2, (0.2, 0.5, 0.3))
    banding = StageMethod("banding", (0.3, 0.7))
    assert banding.stage(0.9, head) == (3, ())  # banding has no stage probabilities
    assert banding.stage(0.1, head) == (1, ())
    with pytest.raises(ValueError, match="cut-points"):
        StageMethod("banding", (0.8, 0.2))


def test_a_bundle_that_records_banding_serves_the_banded_stage(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    manifest = verify_bundle(bundle)
    banding = {"method": "banding", "cut_points": [0.3, 0.7]}
    reseal_bundle(bundle, llnm={**manifest.metrics["llnm"], "risk_stage": banding})
    assert load_llnm(bundle, verify_bundle(bundle)).stage == StageMethod("banding", (0.3, 0.7))
    assert load_llnm(DEMO_BUNDLE_DIR, manifest).stage == StageMethod()  # records none: head

    case = make_case(1)
    paths = write_study([*case.datasets], tmp_path / "study")
    outcome = run_study(paths, tmp_path / "work", OfflineModels.load(bundle))
    assert outcome.outcome == "predicted" and outcome.probability is not None
    assert outcome.risk_stage == band([outcome.probability], (0.3, 0.7))[0]
    assert outcome.stage_probabilities == ()
