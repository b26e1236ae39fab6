"""Recalibration: fits recover known maps, the new bundle is sealed, and serving applies it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dicom_node.app.recalibration import calibrate_bundle
from dicom_node.app.site_validation import ValidationCase
from models.bundle import MANIFEST_FILE, verify_bundle
from models.calibration import (
    Calibration,
    fit_isotonic,
    fit_platt,
    load_calibration,
    threshold_for_sensitivity,
)
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.evaluation import calibration_error_if_calibrated, expected_calibration_error
from phantoms import make_case
from pipeline.offline import OfflineModels, run_study, write_study


def _site(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model that is overconfident and biased: served p = sigmoid(2 * logit(p_true) + 1)."""
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-rng.normal(0, 1.2, n)))
    served = 1 / (1 + np.exp(-(2 * np.log(truth / (1 - truth)) + 1)))
    return served, rng.random(n) < truth


def test_platt_recovers_the_inverse_map_and_isotonic_calibrates_held_out_cases() -> None:
    served, labels = _site(6000, 0)
    step = fit_platt(served, labels)
    assert step.a == pytest.approx(0.5, abs=0.05) and step.b == pytest.approx(-0.5, abs=0.08)
    held, held_labels = _site(3000, 1)
    before = expected_calibration_error(held_labels, held)
    for fitted in (step, fit_isotonic(served, labels)):
        after = expected_calibration_error(held_labels, fitted.apply(held))
        assert after < 0.03 < before
    iso = fit_isotonic(served, labels)
    assert list(iso.knots_x) == sorted(iso.knots_x) and list(iso.knots_y) == sorted(iso.knots_y)


def test_the_threshold_reaches_the_target_sensitivity() -> None:
    served, labels = _site(2000, 2)
    threshold = threshold_for_sensitivity(served, labels, 0.9)
    sensitivity = float(np.mean(served[labels] >= threshold))
    assert sensitivity >= 0.9
    assert float(np.mean(served[labels] > threshold)) < 0.9  # the highest such threshold


def _cases(served: np.ndarray, labels: np.ndarray) -> list[ValidationCase]:
    strata = {"device": "GE", "sex": "F", "age": "45-59", "calibrated": "yes"}
    return [
        ValidationCase(i, bool(y), "predicted", None, float(p), 0.5, strata)
        for i, (p, y) in enumerate(zip(served, labels, strict=True))
    ]


def test_a_recalibrated_bundle_is_sealed_names_its_parent_and_is_served(tmp_path: Path) -> None:
    served, labels = _site(300, 3)
    out = tmp_path / "site-bundle"
    summary = calibrate_bundle(
        DEMO_BUNDLE_DIR, out, _cases(served, labels), method="platt", version="0.4.0-site.1",
        target_sensitivity=0.85,
    )  # fmt: skip
    manifest = verify_bundle(out)
    assert manifest.version == "0.4.0-site.1"
    parent = manifest.training_data["parent"]
    assert parent["version"] == "0.4.0" and len(parent["manifest_sha256"]) == 64
    assert manifest.training_data["site_calibration"]["cases"] == 300
    assert manifest.metrics["llnm"]["threshold"] == summary["threshold"]
    assert summary["calibration_error_after_in_sample"] < summary["calibration_error_before"]
    calibration = load_calibration(out)
    assert len(calibration.steps) == 1 and load_calibration(DEMO_BUNDLE_DIR) == Calibration()
    # Served: the same study through both bundles, the new probability is the mapped old one.
    case = make_case(7)
    paths = write_study(case.datasets, tmp_path / "study")
    before = run_study(paths, tmp_path / "a", OfflineModels.load(DEMO_BUNDLE_DIR))
    after = run_study(paths, tmp_path / "b", OfflineModels.load(out))
    assert before.probability is not None and after.probability is not None
    assert after.probability == pytest.approx(calibration(before.probability), abs=1e-6)
    assert after.risk_stage == before.risk_stage  # the stage keeps the model's probability
    with pytest.raises(ValueError, match="exists"):
        calibrate_bundle(DEMO_BUNDLE_DIR, out, _cases(served, labels), method="platt",
                         version="x")  # fmt: skip
    with pytest.raises(ValueError, match="calibration needs"):
        calibrate_bundle(DEMO_BUNDLE_DIR, tmp_path / "few", _cases(served[:5], labels[:5]),
                         method="isotonic", version="x")  # fmt: skip
    again = tmp_path / "again"
    shutil.rmtree(again, ignore_errors=True)
    calibrate_bundle(out, again, _cases(served, labels), method="isotonic", version="0.4.0-site.2")
    assert len(load_calibration(again).steps) == 2  # the parent's map, then the new one
    data = json.loads((again / MANIFEST_FILE).read_text())
    assert data["training_data"]["parent"]["version"] == "0.4.0-site.1"


def test_a_held_out_share_measures_the_fit_on_cases_it_never_saw(tmp_path: Path) -> None:
    served, labels = _site(400, 5)
    cases = _cases(served, labels)
    summary = calibrate_bundle(DEMO_BUNDLE_DIR, tmp_path / "held", cases, method="platt",
                               version="0.4.0-site.h", holdout=0.5, seed=2)  # fmt: skip
    held = summary["held_out"]
    assert held["cases"] == 200 and summary["cases"] == 200
    assert held["calibration_error_after"] < held["calibration_error_before"]
    # The same split again: the held-out cases are the seeded half, never the fitted ones.
    again = calibrate_bundle(DEMO_BUNDLE_DIR, tmp_path / "held2", cases, method="platt",
                             version="0.4.0-site.h", holdout=0.5, seed=2)  # fmt: skip
    assert again["held_out"] == held


def test_the_calibrated_reference_tells_sampling_from_miscalibration() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(2, 3, 100)
    reference = calibration_error_if_calibrated(p, draws=400)
    assert 0.05 < reference["median"] < 0.15 and reference["low"] < reference["median"]
    honest = expected_calibration_error(rng.random(100) < p, p)
    assert reference["low"] <= honest <= reference["high"]
    shifted = expected_calibration_error(rng.random(100) < p * 0.5, p)  # half the events
    assert shifted > reference["high"]
