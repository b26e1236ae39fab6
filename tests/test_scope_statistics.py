"""Scope statistics (models.scope), the study's reason (pipeline.scope) and the scope settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from db.listings import JobSummary
from dicom_node.api.dashboard import result_text
from dicom_node.settings import Settings
from imaging.scope_reasons import Exclusion, Reason, outcome_text
from models.bundle import MANIFEST_FILE, BundleError, reseal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.scope import (
    LLNM_EMBEDDING_INPUTS,
    SCOPE_DIR,
    PartedDistribution,
    Range,
    ScopeStatistics,
    ViewLimits,
    fit_embedding,
    fit_parts,
    fit_range,
    load_scope,
    save_scope,
    shrunk_covariance,
)
from pipeline.contracts import ExcludedImage
from pipeline.infer import load_llnm
from pipeline.scope import not_assessed, study_exclusion
from pipeline.segment import Segmenters, image_parts, load_segmenters


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


def test_parts_are_thresholded_together_and_the_worst_part_is_named() -> None:
    rng = np.random.default_rng(3)
    layout = (("shallow", 3), ("deep", 5), ("texture", 2))
    train, validation = rng.normal(size=(3000, 10)), rng.normal(size=(1000, 10))
    fitted = fit_parts(train, validation, layout, percentile=95.0)
    assert fitted.layout == layout and fitted.percentile == 95.0
    passed = [not fitted.worst(row).exceeded for row in validation]
    assert np.mean(passed) == pytest.approx(0.95, abs=0.002)  # all parts together, not each
    alone = fit_embedding(train[:, 3:8], validation[:, 3:8], percentile=95.0)
    assert fitted.parts[1].distribution.threshold > alone.threshold  # raised for the union
    shifted = np.zeros(10)
    shifted[8] = 12.0  # only the texture part moves
    worst = fitted.worst(shifted)
    assert worst.part == "texture" and worst.exceeded
    assert worst.distance == pytest.approx(12.0, rel=0.1)
    assert not fitted.worst(np.zeros(10)).exceeded
    with pytest.raises(ValueError, match="10 values"):
        fitted.worst(np.zeros(9))
    with pytest.raises(ValueError, match="do not make up"):
        fit_parts(train, validation, (("shallow", 3), ("deep", 5)))


def test_ranges_are_what_fitting_saw() -> None:
    seen = fit_range(np.linspace(0.1, 0.3, 1001))
    # 0.5th-99.5th percentile (0.101-0.299), widened by a tenth of that range each side
    assert seen.low == pytest.approx(0.101 - 0.0198) and seen.high == pytest.approx(0.299 + 0.0198)
    assert 0.2 in seen and 0.09 in seen and 0.31 in seen
    assert 0.08 not in seen and 0.32 not in seen


def test_statistics_round_trip_through_a_resealed_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    shutil.rmtree(bundle / SCOPE_DIR)
    rng = np.random.default_rng(2)
    image = fit_parts(rng.normal(size=(50, 6)), rng.normal(size=(30, 6)), (("a", 4), ("b", 2)))
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
    assert isinstance(loaded.image, PartedDistribution) and loaded.image.layout == image.layout
    for mine, theirs in zip(loaded.image.parts, image.parts, strict=True):
        np.testing.assert_allclose(mine.distribution.mean, theirs.distribution.mean)
        threshold = theirs.distribution.threshold
        assert mine.distribution.threshold == pytest.approx(threshold, abs=1e-4)


def test_statistics_of_another_layout_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    manifest = verify_bundle(DEMO_BUNDLE_DIR)
    segmenters = load_segmenters(DEMO_BUNDLE_DIR, manifest)
    scope = load_scope(DEMO_BUNDLE_DIR)
    assert scope is not None and scope.image.layout == image_parts(segmenters.thyroid)
    assert [name for name, _ in scope.image.layout] == [
        *(f"encoder{depth}" for depth in range(1, 5)),
        "texture",
    ]
    other = dataclasses.replace(scope, image=PartedDistribution(scope.image.parts[:-1], 99.0))
    with pytest.raises(BundleError, match="fit them again"):
        Segmenters.of(segmenters.nodule, segmenters.thyroid, manifest, other)
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    statistics = bundle / SCOPE_DIR / "statistics.json"
    statistics.write_text(statistics.read_text().replace('"parts"', '"sections"'))
    with pytest.raises(BundleError, match="fit them again"):
        load_scope(bundle)


def test_statistics_of_embeddings_with_the_report_are_refused(tmp_path: Path) -> None:
    """Statistics fitted before the report was withheld from the gate's embedding do not load."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    statistics = bundle / SCOPE_DIR / "statistics.json"
    summary = json.loads(statistics.read_text())
    assert summary["ood"]["llnm"]["inputs"] == LLNM_EMBEDDING_INPUTS
    del summary["ood"]["llnm"]["inputs"]
    statistics.write_text(json.dumps(summary))
    with pytest.raises(BundleError, match=r"other inputs.*fit them again"):
        load_scope(bundle)


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
