"""The prediction SR and the failure SR: real phantom studies, real dciodvfy and dsrdump."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import Dataset, dcmread
from report_cases import predicted_case
from scipy import ndimage

from imaging.features.extract import extract_view
from imaging.gland_frame import FramedView, frame_index_nodule
from imaging.identity import MANUFACTURER
from imaging.png import read_png
from imaging.registration import register
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.explain import CONTRIBUTION_GROUPS
from models.risk_map import PopulationLocation, load_risk_map
from phantoms import PhantomCase, make_case
from phantoms.case import PhantomOptions
from pipeline.report import codes
from pipeline.report.inputs import ReportInput, ReportObject, object_uid
from pipeline.report.sr import build_sr, failure_sr, nodule_outline

needs_dicom3tools = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools not installed"
)
needs_dcmtk = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")


_CALIBRATED = PhantomOptions()


@dataclass(frozen=True)
class Built:
    """A phantom case, its report input and the SR made from it."""

    case: PhantomCase
    report: ReportInput
    sr: ReportObject

    @property
    def dataset(self) -> Dataset:
        return dcmread(self.sr.path)


def _build(
    folder: Path, seed: int, options: PhantomOptions = _CALIBRATED, *, views: int = 2
) -> Built:
    case = make_case(seed, options)
    report = predicted_case(case, folder, views=views)[0]
    return Built(case=case, report=report, sr=build_sr(report))


@pytest.fixture(scope="module")
def two_views(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("seed1"), 1)


@pytest.fixture(scope="module")
def one_view(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("seed3"), 3, views=1)


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("seed2"), 2, PhantomOptions(with_regions=False))


@pytest.fixture(scope="module")
def failure(two_views: Built, tmp_path_factory: pytest.TempPathFactory) -> ReportObject:
    return failure_sr(
        two_views.report.views[0].original,
        out_dir=tmp_path_factory.mktemp("failure"),
        job_id=7,
        reason="segment: the nodule segmenter ran out of memory\n" + "x" * 5000,
        algorithm=two_views.report.algorithm,
    )


def _items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _dsrdump(path: Path) -> str:
    run = subprocess.run(["dsrdump", "+Pl", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _dsrdump_short(path: Path) -> str:
    """dsrdump as a person runs it: long text values cut short."""
    run = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _dciodvfy(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return (run.stdout + run.stderr).splitlines()


def _outlines(dataset: Dataset) -> dict[str, NDArray[np.float64]]:
    """Referenced SOP Instance UID -> (N, 2) outline points of every image region."""
    return {
        str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID): np.asarray(
            item.GraphicData, dtype=np.float64
        ).reshape(-1, 2)
        for item in _items(dataset)
        if item.ValueType == "SCOORD"
    }


def _enclosed(outline: NDArray[np.float64], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """The pixels whose centres the outline encloses."""
    filled = np.zeros(shape, dtype=np.uint8)
    corners = np.rint(outline - 0.5).astype(np.int32)  # pixel-centre coordinates to indices
    cv2.fillPoly(filled, [corners], 1)
    return filled.astype(bool)


def _iou(outline: NDArray[np.float64], truth: NDArray[np.bool_]) -> float:
    """IoU of the pixels whose centres the outline encloses with ``truth``."""
    inside = _enclosed(outline, truth.shape)
    return float((inside & truth).sum() / (inside | truth).sum())


@needs_dicom3tools
@pytest.mark.parametrize("which", ["two_views", "one_view", "uncalibrated", "failure"])
def test_dciodvfy_finds_no_errors(which: str, request: pytest.FixtureRequest) -> None:
    made = request.getfixturevalue(which)
    path = made.path if isinstance(made, ReportObject) else made.sr.path
    errors = [line for line in _dciodvfy(path) if line.startswith("Error")]
    assert errors == []


@needs_dcmtk
def test_dsrdump_shows_the_prediction(two_views: Built) -> None:
    text = _dsrdump(two_views.sr.path)
    prediction = two_views.report.prediction
    assert f'"LLNM probability")="{round(100 * prediction.probability, 2)}" (%,UCUM' in text
    stage = codes.STAGE[prediction.risk_stage]
    assert f'"LLNM risk stage")=({stage.value},SCT,"{stage.meaning}")' in text
    assert '"LLNM prediction")=(10828004,SCT,"Positive")' in text  # seed 1 is positive
    assert f'"Threshold Value")="{round(100 * prediction.threshold, 2)}" (%,UCUM' in text
    for group in CONTRIBUTION_GROUPS:
        assert f'"Contribution: {group}")="' in text
    # dsrdump cuts long text: the label must come first to be seen.
    assert '"Comment")="NOT FOR CLINICAL USE. LLNM ...' in _dsrdump_short(two_views.sr.path)


def test_sr_joins_the_original_study(two_views: Built) -> None:
    ds, original = two_views.dataset, two_views.case.datasets[0]
    assert (ds.PatientID, str(ds.PatientName)) == (original.PatientID, str(original.PatientName))
    assert ds.StudyInstanceUID == original.StudyInstanceUID
    originals = {str(d.SOPInstanceUID) for d in two_views.case.datasets}
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    images = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in _items(ds)
        if item.ValueType == "IMAGE"
    }
    assert evidence == images == originals


def test_sr_series_equipment_and_coding_scheme(two_views: Built) -> None:
    ds, prediction = two_views.dataset, two_views.report.prediction
    assert ds.SOPInstanceUID == object_uid(1, "sr")
    assert ds.SeriesInstanceUID == object_uid(1, "sr-series")
    assert (ds.SeriesNumber, ds.InstanceNumber) == (9901, 1)
    assert ds.SeriesDescription == "LLNM-Net AI result - NOT FOR CLINICAL USE"
    algorithms = [
        e
        for e in ds.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        and e.Manufacturer == MANUFACTURER  # highdicom adds itself too
    ]
    assert [(e.ManufacturerModelName, e.SoftwareVersions) for e in algorithms] == [
        (prediction.bundle_name, prediction.bundle_version)
    ]
    assert algorithms[0].ContributionDescription.startswith("NOT FOR CLINICAL USE. ")
    schemes = [s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence]
    assert schemes == ["99LLNM", "99IHE"]


def test_outline_lies_on_the_true_nodule(two_views: Built) -> None:
    """Seed 1 is segmented well (mask IoU ~0.9), so its outlines must match the truth."""
    truths = {
        str(d.SOPInstanceUID): t.nodule_mask
        for d, t in zip(two_views.case.datasets, two_views.case.images, strict=True)
    }
    outlines = _outlines(two_views.dataset)
    assert outlines.keys() == truths.keys()
    for uid, outline in outlines.items():
        np.testing.assert_array_equal(outline[0], outline[-1])  # closed
        assert _iou(outline, truths[uid]) > 0.8


@pytest.mark.parametrize("which", ["two_views", "one_view", "uncalibrated"])
def test_outline_traces_the_predicted_mask(which: str, request: pytest.FixtureRequest) -> None:
    """Wherever the demo segmenter is off, the outline still follows its mask exactly.

    The outline is the index nodule's; other blobs of the mask are other nodules.
    """
    built: Built = request.getfixturevalue(which)
    outlines = _outlines(built.dataset)
    assert len(outlines) == len(built.report.views)
    for view in built.report.views:
        area = view.measured.segmented.crop.area
        mask = read_png(view.measured.segmented.nodule_mask, grey=True) != 0
        placed = np.zeros((480, 640), dtype=bool)  # the phantom's frame size
        placed[area.y0 : area.y1, area.x0 : area.x1] = mask
        outline = outlines[view.original_sop_instance_uid]
        blobs, _ = ndimage.label(placed, structure=np.ones((3, 3), dtype=bool))
        traced = np.isin(blobs, blobs[_enclosed(outline, placed.shape) & placed])
        assert _iou(outline, traced) > 0.9


def _groups(dataset: Dataset) -> list[Dataset]:
    """The measurement groups of the Imaging Measurements container."""
    (measurements,) = [
        item
        for item in dataset.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    return list(measurements.ContentSequence)


def test_one_view_case_has_one_nodule_group(one_view: Built) -> None:
    assert len(one_view.report.views) == 1
    assert len(_groups(one_view.dataset)) == 1


@pytest.mark.parametrize("which", ["two_views", "one_view", "uncalibrated"])
def test_every_group_is_an_outline_viewers_can_draw(
    which: str, request: pytest.FixtureRequest
) -> None:
    """What OHIF and Orthanc Stone need to draw a TID 1500 SR, and what they label first."""
    built: Built = request.getfixturevalue(which)
    ds = built.dataset
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert len(ds.CurrentRequestedProcedureEvidenceSequence) == 1
    for group in _groups(ds):
        assert group.ContentTemplateSequence[0].TemplateIdentifier == "1410"
        (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        assert region.ConceptNameCodeSequence[0].CodeValue == "111030"  # Image Region
        (image,) = region.ContentSequence
        assert image.ValueType == "IMAGE"
        assert image.ConceptNameCodeSequence[0].CodeValue == "111040"  # Original Source
        assert len(image.ReferencedSOPSequence) == 1
        numbers = [
            i.ConceptNameCodeSequence[0].CodeMeaning
            for i in group.ContentSequence
            if i.ValueType == "NUM"
        ]
        assert numbers[:4] == ["LLNM probability", "Long axis", "Short axis", "Capsule distance"]
        assert all(len(meaning) <= 20 for meaning in numbers[:5])  # the ones viewers show


def test_a_negative_prediction_never_reads_as_metastasis(two_views: Built, tmp_path: Path) -> None:
    negative = dataclasses.replace(
        two_views.report.prediction, probability=0.12, positive=False, risk_stage=1
    )
    job = dataclasses.replace(two_views.report.job, work_dir=tmp_path)
    made = build_sr(dataclasses.replace(two_views.report, prediction=negative, job=job))
    ds = dcmread(made.path)
    meanings = {
        code.CodeMeaning
        for item in _items(ds)
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence")
        for code in item.get(key, [])
    }
    assert not any("metastasis" in meaning.lower() for meaning in meanings)
    verdicts = [
        (i.ConceptCodeSequence[0].CodeMeaning)
        for i in _items(ds)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "PREDICTION"
    ]
    stages = {
        i.ConceptCodeSequence[0].CodeValue
        for i in _items(ds)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "RISK-STAGE"
    }
    assert verdicts == ["Negative"] * 3  # two views' groups and the study's evaluations
    assert stages == {"258215001"}  # SCT Stage 1


@needs_dcmtk
def test_uncalibrated_sizes_are_in_pixels(uncalibrated: Built) -> None:
    assert "(mm,UCUM" not in _dsrdump(uncalibrated.sr.path)
    assert '"Long axis")="' in _dsrdump(uncalibrated.sr.path)
    assert "({pixels},UCUM" in _dsrdump(uncalibrated.sr.path)


def test_rerun_keeps_uids_and_other_jobs_get_new_ones(two_views: Built, tmp_path: Path) -> None:
    job = two_views.report.job
    again_job = dataclasses.replace(job, work_dir=tmp_path / "again")
    other_job = dataclasses.replace(job, job_id=2, work_dir=tmp_path / "other")
    again = build_sr(dataclasses.replace(two_views.report, job=again_job))
    other = build_sr(dataclasses.replace(two_views.report, job=other_job))
    assert again.sop_instance_uid == two_views.sr.sop_instance_uid
    assert again.series_instance_uid == two_views.sr.series_instance_uid
    assert other.sop_instance_uid != two_views.sr.sop_instance_uid
    assert other.series_instance_uid != two_views.sr.series_instance_uid


@needs_dcmtk
def test_failure_sr_states_the_reason_in_the_original_study(
    failure: ReportObject, two_views: Built
) -> None:
    ds, original = dcmread(failure.path), two_views.case.datasets[0]
    assert (ds.PatientID, ds.StudyInstanceUID) == (original.PatientID, original.StudyInstanceUID)
    assert failure.sop_instance_uid == object_uid(7, "failure_sr")
    assert failure.description == "LLNM-Net analysis failed - NOT FOR CLINICAL USE"
    text = _dsrdump(failure.path)
    assert "segment: the nodule segmenter ran out of memory" in text
    assert "NOT FOR CLINICAL USE" in text
    (message,) = [i.TextValue for i in _items(ds) if "failed" in i.get("TextValue", "")]
    assert message.endswith(" [...]") and len(message) < 1100


def test_outline_maps_crop_pixels_to_original_pixel_centres() -> None:
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[5:15, 5:15] = 255  # the index nodule: the larger one
    mask[30:33, 40:43] = 255
    index = extract_view(np.zeros_like(mask), mask, np.zeros_like(mask), None).index
    assert index is not None
    outline = nodule_outline(mask, index, (100, 50))
    expected = {(105.5, 55.5), (114.5, 55.5), (114.5, 64.5), (105.5, 64.5)}
    assert {(float(x), float(y)) for x, y in outline} == expected
    assert len(outline) == 5


def test_every_model_input_has_a_contribution_code() -> None:
    assert tuple(codes.CONTRIBUTION) == CONTRIBUTION_GROUPS
    assert len({c.value for c in codes.CONTRIBUTION.values()}) == len(CONTRIBUTION_GROUPS)
    assert all(len(c.value) <= 16 for c in codes.CONTRIBUTION.values())  # SH


def test_originals_without_type2_attributes_still_give_conformant_objects(
    tmp_path: Path,
) -> None:
    from pipeline.report.secondary_capture import build_heatmap_scs
    from pipeline.report.segmentation import build_seg

    report, _ = predicted_case(make_case(1), tmp_path)
    missing = ["PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"]
    missing += ["ReferringPhysicianName", "StudyID", "AccessionNumber"]
    for view in report.views:
        original = dcmread(view.original)
        for keyword in missing:
            delattr(original, keyword)
        original.save_as(view.original)
    notice = failure_sr(
        report.views[0].original,
        out_dir=tmp_path / "n",
        job_id=1,
        reason="x",
        algorithm=report.algorithm,
    )
    objects = [build_sr(report), *build_heatmap_scs(report), *build_seg(report), notice]
    for made in objects:
        errors = [line for line in _dciodvfy(made.path) if line.startswith("Error")]
        assert errors == [], (made.kind, errors)
        dataset = dcmread(made.path, stop_before_pixels=True)
        assert dataset.PatientName == "" and dataset.PatientID == original.PatientID


def _population_risks(dataset: Dataset) -> list[float]:
    """Each nodule group's population location risk, as a fraction."""
    return [
        float(item.MeasuredValueSequence[0].NumericValue) / 100
        for group in _groups(dataset)
        for item in group.ContentSequence
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "POP-RISK"
    ]


@pytest.mark.parametrize("which", ["two_views", "uncalibrated"])
def test_population_risk_is_the_map_at_the_nodules_true_registered_place(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The SR's value is the demo map's at the generator's nodule, registered, +-1 pixel."""
    built: Built = request.getfixturevalue(which)
    risk_map = load_risk_map(DEMO_BUNDLE_DIR)
    assert risk_map is not None
    risks = _population_risks(built.dataset)
    assert len(risks) == len(built.report.views) == 2
    for risk, view in zip(risks, built.report.views, strict=True):
        placed = view.measured.population
        assert isinstance(placed, PopulationLocation)
        truth = built.case.images[0 if placed.plane == "transverse" else 1]
        x0, y0, x1, y1 = truth.image_area
        nodules, thyroid = truth.nodule_mask[y0:y1, x0:x1], truth.thyroid_mask[y0:y1, x0:x1]
        features = extract_view(
            truth.pixels[y0:y1, x0:x1], nodules, thyroid, truth.mm_per_pixel, view=placed.plane
        )
        framed = frame_index_nodule(nodules, thyroid, features, built.case.lobe)
        assert isinstance(framed, FramedView), framed
        entry = risk_map.planes[(placed.plane, built.case.lobe)]
        position = register(entry.template, framed).position
        assert position is not None
        col, row = (round(c) for c in position)
        near = entry.maps["rate"][row - 1 : row + 2, col - 1 : col + 2]
        assert np.nanmin(near) - 5e-5 <= risk <= np.nanmax(near) + 5e-5, (risk, near)
    caption = " ".join(
        str(item.TextValue) for item in _items(built.dataset) if item.ValueType == "TEXT"
    )
    assert "Population location risk" in caption
