"""Scope statistics (models.scope), the study's reason (pipeline.scope) and the scope settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from db.listings import JobSummary
from dicom_node.api.dashboard import result_text
from dicom_node.settings import Settings
from imaging.scope_reasons import Exclusion, Reason, outcome_text
from models.bundle import MANIFEST_FILE, reseal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.scope import (
    SCOPE_DIR,
    Range,
    ScopeStatistics,
    ViewLimits,
    fit_embedding,
    fit_range,
    load_scope,
    save_scope,
    shrunk_covariance,
)
from pipeline.contracts import ExcludedImage
from pipeline.infer import load_llnm
from pipeline.scope import not_assessed, study_exclusion


def test_mahalanobis_distance_and_the_validation_percentile() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 4.0, 0.5])
    train = rng.normal(size=(4000, 3)) * scale + 10.0
    validation = rng.normal(size=(2000, 3)) * scale + 10.0
    fitted = fit_embedding(train, validation, percentile=95.0)
    # With many samples the shrinkage vanishes: the distance is the plain Mahalanobis distance.
    point = np.array([[10.0, 18.0, 10.0]])  # two standard deviations along the second axis
    assert fitted.distances(point)[0] == pytest.approx(2.0, rel=0.05)
    assert (fitted.distances(validation) <= fitted.threshold).mean() == pytest.approx(0.95)
    # chi with 3 degrees of freedom: its 95th percentile is about 2.8
    assert fitted.threshold == pytest.approx(2.8, abs=0.15)
    far = np.array([[10.0, 10.0, 14.0]])  # eight standard deviations along the narrow axis
    assert fitted.distances(far)[0] == pytest.approx(8.0, rel=0.05)  # not 4, as unscaled


def test_shrinkage_keeps_few_samples_in_many_dimensions_invertible() -> None:
    x = np.random.default_rng(1).normal(size=(20, 50))
    covariance = shrunk_covariance(x)
    assert np.linalg.matrix_rank(covariance) == 50  # the sample covariance has rank 19
    with pytest.raises(ValueError, match="need"):
        fit_embedding(x[:1], x)


def test_ranges_are_what_fitting_saw() -> None:
    seen = fit_range(np.linspace(0.1, 0.3, 1001))
    assert seen.low == pytest.approx(0.102) and seen.high == pytest.approx(0.298)
    assert 0.2 in seen and 0.1 not in seen and 0.3 not in seen


def test_statistics_round_trip_through_a_resealed_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    shutil.rmtree(bundle / SCOPE_DIR)
    rng = np.random.default_rng(2)
    image = fit_embedding(rng.normal(size=(50, 4)), rng.normal(size=(30, 4)))
    llnm = fit_embedding(rng.normal(size=(50, 3)), rng.normal(size=(30, 3)))
    statistics = ScopeStatistics(
        ViewLimits(Range(0.05, 0.4), Range(0.9, 1.0), 0.3), image, llnm, {"data": "test"}
    )
    summary = save_scope(bundle, statistics)
    manifest = reseal_bundle(bundle, scope=summary)
    assert verify_bundle(bundle).metrics["scope"]["ood"]["llnm"]["threshold"] == round(
        llnm.threshold, 4
    )
    assert manifest.name == "llnm-demo" and manifest.synthetic
    loaded = load_scope(bundle)
    assert loaded is not None and loaded.limits == statistics.limits
    np.testing.assert_allclose(loaded.llnm.precision, llnm.precision)
    assert loaded.image.threshold == pytest.approx(image.threshold, abs=1e-4)


def test_a_bundle_without_statistics_loads_and_says_the_check_is_unavailable(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "old"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    shutil.rmtree(bundle / SCOPE_DIR)
    text = (bundle / MANIFEST_FILE).read_text(encoding="utf-8")
    assert '"scope"' in text
    reseal_bundle(bundle)  # the manifest's metrics.scope stays, the files are gone
    assert load_scope(bundle) is None
    llnm = load_llnm(bundle, verify_bundle(bundle))
    assert llnm.scope is None


def _excluded(*reasons: Reason) -> list[ExcludedImage]:
    return [ExcludedImage(f"2.25.{n}", Exclusion(r, f"d{n}")) for n, r in enumerate(reasons)]


def test_the_studys_reason_is_its_images_most_frequent_one() -> None:
    assert study_exclusion(_excluded(Reason.NO_THYROID)) == Exclusion(Reason.NO_THYROID, "d0")
    mixed = study_exclusion(
        _excluded(Reason.OUT_OF_DISTRIBUTION, Reason.COLOUR_OVERLAY, Reason.OUT_OF_DISTRIBUTION)
    )
    assert mixed.reason is Reason.OUT_OF_DISTRIBUTION
    assert "2 outside the model's training range, 1 colour overlay" in mixed.detail
    tie = study_exclusion(_excluded(Reason.NO_THYROID, Reason.COLOUR_DOPPLER))
    assert tie.reason is Reason.COLOUR_DOPPLER  # the earlier gate
    earlier = _excluded(Reason.NOT_ULTRASOUND)
    result = not_assessed(7, _excluded(Reason.NO_THYROID), before=earlier)
    assert result.exclusion.reason is Reason.NO_THYROID and len(result.excluded) == 2
    with pytest.raises(ValueError):
        study_exclusion([])


def test_scope_settings_are_checked_when_read() -> None:
    settings = Settings(scope={"allow": {"BodyPartExamined": ["NECK|THYROID"]}})
    assert settings.scope.rules().allow["BodyPartExamined"] == ("NECK|THYROID",)
    with pytest.raises(ValidationError, match="StudyDescription"):
        Settings(scope={"deny": {"StudyDescription": ["(unclosed"]}})
    with pytest.raises(ValidationError, match="PatientName"):
        Settings(scope={"deny": {"PatientName": ["x"]}})


def test_a_not_assessed_result_reads_as_its_reason_everywhere() -> None:
    assert outcome_text("not_assessed", "colour_doppler") == "not assessed: colour Doppler image"
    assert outcome_text("not_assessed", "from_a_newer_node") == "not assessed: from_a_newer_node"
    assert outcome_text("no_nodule_found", None) == "no nodule found"
    summary = JobSummary(
        1, "done", None, "20260101", "not_assessed", "no_thyroid", None, None, None, True
    )
    assert result_text(summary) == "not assessed: no thyroid found"
