"""Every kind of object the node makes, checked the same way: IHE AI Results and identity.

One phantom study goes through every stage; from it come the prediction SR, the
heatmap Secondary Captures, the SEGs and the three notices (failure, no nodule, not
assessed). Each must pass dciodvfy, name the model bundle in Contributing Equipment
as IHE AI Results asks, and carry the original's patient and study attributes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from report_cases import predicted_case

from imaging.identity import MANUFACTURER
from models.bundle import bundle_identity, reseal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from phantoms import make_case
from pipeline.report.common import IDENTITY_ATTRIBUTES
from pipeline.report.inputs import ReportInput, ReportObject
from pipeline.report.secondary_capture import build_heatmap_scs
from pipeline.report.segmentation import build_seg
from pipeline.report.sr import build_sr, failure_sr, no_nodule_sr, not_assessed_sr

KINDS = ("sr", "sc", "seg", "failure", "no_nodule", "not_assessed")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportInput, dict[str, ReportObject]]:
    folder = tmp_path_factory.mktemp("objects")
    report, _ = predicted_case(make_case(1), folder)
    evidence = report.views[0].original
    notices = folder / "notices"
    objects = {
        "sr": build_sr(report),
        "sc": build_heatmap_scs(report)[0],
        "seg": build_seg(report)[0],
        "failure": failure_sr(
            evidence, out_dir=notices, job_id=1, reason="x", algorithm=report.algorithm
        ),
        "no_nodule": no_nodule_sr(
            evidence, out_dir=notices, job_id=1, views=2, algorithm=report.algorithm
        ),
        "not_assessed": not_assessed_sr(
            evidence,
            out_dir=notices,
            job_id=1,
            reason="colour Doppler image",
            excluded=["1.2.3: colour overlay"],
            algorithm=report.algorithm,
        ),
    }
    return report, objects


def _read(made: tuple[ReportInput, dict[str, ReportObject]], kind: str) -> Dataset:
    return dcmread(made[1][kind].path, stop_before_pixels=True)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_errors(
    made: tuple[ReportInput, dict[str, ReportObject]], kind: str
) -> None:
    run = subprocess.run(["dciodvfy", str(made[1][kind].path)], capture_output=True, text=True)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_object_names_the_algorithm_as_ihe_ai_results_asks(
    made: tuple[ReportInput, dict[str, ReportObject]], kind: str
) -> None:
    report, _ = made
    algorithms = [
        item
        for item in _read(made, kind).ContributingEquipmentSequence
        if (purpose := item.PurposeOfReferenceCodeSequence[0]).CodeValue == "Newcode1"
        and purpose.CodingSchemeDesignator == "99IHE"
        and purpose.CodeMeaning == "Processing Algorithm"
    ]
    assert len(algorithms) == 1
    (algorithm,) = algorithms
    manifest = verify_bundle(DEMO_BUNDLE_DIR)
    assert algorithm.Manufacturer == MANUFACTURER
    assert (algorithm.ManufacturerModelName, algorithm.SoftwareVersions) == (
        manifest.name,
        manifest.version,
    )
    assert algorithm.DeviceUID == manifest.identity.device_uid == report.algorithm.device_uid
    assert algorithm.ContributionDescription.startswith("NOT FOR CLINICAL USE. ")


@pytest.mark.parametrize("kind", KINDS)
def test_every_object_carries_the_originals_patient_and_study(
    made: tuple[ReportInput, dict[str, ReportObject]], kind: str
) -> None:
    report, _ = made
    original = dcmread(report.views[0].original, stop_before_pixels=True)
    present = [k for k in IDENTITY_ATTRIBUTES if k in original]
    assert {"IssuerOfPatientID", "PatientAge", "StudyDescription"} <= set(present)
    made_object = _read(made, kind)
    assert {k: made_object.get(k) for k in present} == {k: original.get(k) for k in present}


def test_the_device_uid_changes_with_any_file_of_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle)
    before = verify_bundle(bundle).identity.device_uid
    (bundle / "README.md").write_text("another model card\n")
    after = reseal_bundle(bundle).identity.device_uid
    assert before != after
    assert bundle_identity(bundle).device_uid == after  # what the notices read


def test_a_bundle_without_a_readable_manifest_is_still_named_and_labelled(tmp_path: Path) -> None:
    identity = bundle_identity(tmp_path / "missing-bundle")
    assert identity.name == "missing-bundle"
    assert identity.clinical_use_label == "NOT FOR CLINICAL USE"
