"""Real report inputs: a phantom study run through every stage up to infer, no node needed."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from models.demo import DEMO_BUNDLE_DIR
from phantoms import PhantomCase
from pipeline.contracts import InstanceRef, StudyInput
from pipeline.crop import crop
from pipeline.deidentify.options import DEFAULT_OPTIONS
from pipeline.deidentify.stage import deidentify
from pipeline.features import MeasuredStudy, RiskMapLoader, measure
from pipeline.infer import LlnmLoader, PredictedStudy, infer_study
from pipeline.intake import IntakeReport, intake
from pipeline.report.inputs import ReportInput
from pipeline.report.reidentify import report_input
from pipeline.segment import SegmentedStudy, SegmenterLoader, segment_study

_SEGMENTERS = SegmenterLoader(DEMO_BUNDLE_DIR)
_LLNM = LlnmLoader(DEMO_BUNDLE_DIR)
_RISK_MAP = RiskMapLoader(DEMO_BUNDLE_DIR)


def write_case(
    case: PhantomCase, folder: Path, *, with_report: bool = True, views: int = 2
) -> list[Path]:
    """The case's instances (its first ``views`` images) as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = [*case.datasets[:views]]
    if with_report and case.report_dataset is not None:
        datasets.append(case.report_dataset)
    paths = []
    for n, dataset in enumerate(datasets):
        paths.append(folder / f"{n}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def predicted_case(
    case: PhantomCase, tmp_path: Path, *, job_id: int = 1, views: int = 2
) -> tuple[ReportInput, PredictedStudy]:
    """Run intake to infer on ``case`` (demo bundle) and pair the views with the originals.

    ``views=1`` sends the transverse image only: a study with a single view.
    """
    paths = write_case(case, tmp_path / "spool", views=views)
    refs = tuple(InstanceRef.of(dcmread(p, stop_before_pixels=True), p) for p in paths)
    work_dir = tmp_path / "work" / f"job-{job_id}"
    work_dir.mkdir(parents=True)
    study = StudyInput(
        job_id=job_id,
        study_instance_uid=str(case.datasets[0].StudyInstanceUID),
        instances=refs,
        work_dir=work_dir,
    )
    report = intake(study)
    assert isinstance(report, IntakeReport)
    deidentified = deidentify(report, options=DEFAULT_OPTIONS)
    segmented = segment_study(crop(deidentified.study), _SEGMENTERS())
    assert isinstance(segmented, SegmentedStudy)
    measured = measure(segmented, risk_map=_RISK_MAP())
    assert isinstance(measured, MeasuredStudy)
    predicted = infer_study(measured, _LLNM())
    assert isinstance(predicted, PredictedStudy)
    originals = {r.sop_instance_uid: r.path for r in refs}
    return report_input(predicted, deidentified.pseudonyms, originals), predicted
