"""Heatmap Secondary Captures and mask SEGs of real phantom jobs, checked with dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import Dataset, dcmread
from pydicom.uid import UltrasoundMultiFrameImageStorage
from report_cases import predicted_case

from imaging.png import read_png
from phantoms import PhantomCase, make_case
from pipeline.report.common import SERIES_NUMBER, result_caption
from pipeline.report.heatmap import FONT, render_heatmap, wrap_text
from pipeline.report.inputs import ReportInput, ReportObject, ReportView
from pipeline.report.secondary_capture import build_heatmap_scs
from pipeline.report.segmentation import build_seg

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
# Pixels of the crop further than this from the index nodule box must be untouched.
BOX_MARGIN = 3


@dataclass(frozen=True)
class Job:
    case: PhantomCase
    report: ReportInput
    scs: tuple[ReportObject, ...]
    segs: tuple[ReportObject, ...]

    def truth_index(self, view: ReportView) -> int:
        uids = [str(ds.SOPInstanceUID) for ds in self.case.datasets]
        return uids.index(view.original_sop_instance_uid)


def _job(tmp: Path, seed: int, job_id: int, views: int = 2) -> Job:
    case = make_case(seed)
    report = predicted_case(case, tmp, job_id=job_id, views=views)[0]
    return Job(case, report, build_heatmap_scs(report), build_seg(report))


@pytest.fixture(scope="module")
def two_views(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return _job(tmp_path_factory.mktemp("seed1"), seed=1, job_id=1)


@pytest.fixture(scope="module")
def one_view(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return _job(tmp_path_factory.mktemp("seed3"), seed=3, job_id=3, views=1)


@pytest.fixture(scope="module", params=["two_views", "one_view"])
def job(request: pytest.FixtureRequest) -> Job:
    result: Job = request.getfixturevalue(request.param)
    return result


def _rgb(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def _iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_one_object_of_each_kind_per_view(two_views: Job, one_view: Job) -> None:
    assert (len(two_views.scs), len(two_views.segs)) == (2, 2)
    assert (len(one_view.scs), len(one_view.segs)) == (1, 1)
    for job in (two_views, one_view):
        assert [o.path.name for o in job.scs] == [f"sc_{i}.dcm" for i in (1, 2)][: len(job.scs)]
        assert {o.kind for o in job.segs} == {"seg"}


@needs_dciodvfy
def test_dciodvfy_reports_no_errors(job: Job) -> None:
    for obj in (*job.scs, *job.segs):
        result = subprocess.run(
            [str(DCIODVFY), str(obj.path)], capture_output=True, text=True, check=False
        )
        lines = (result.stdout + result.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines


def test_sc_belongs_to_the_original_patient_and_study(job: Job) -> None:
    original = job.case.datasets[0]
    for number, (obj, view) in enumerate(zip(job.scs, job.report.views, strict=True), start=1):
        sc = dcmread(obj.path)
        assert sc.PatientID == original.PatientID
        assert sc.PatientName == original.PatientName
        assert sc.StudyInstanceUID == original.StudyInstanceUID
        assert sc.SeriesNumber == SERIES_NUMBER["sc"]
        assert sc.InstanceNumber == number
        assert sc.BurnedInAnnotation == "YES"
        assert sc.SeriesDescription == "LLNM-Net heatmaps - NOT FOR CLINICAL USE"
        assert sc.ImageComments == result_caption(job.report.prediction, "NOT FOR CLINICAL USE")
        assert "NOT FOR CLINICAL USE" in sc.DerivationDescription
        source = sc.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == view.original_sop_instance_uid
        assert source.ReferencedSOPClassUID == original.SOPClassUID


def test_sc_changes_the_crop_only_at_the_nodule_box(job: Job) -> None:
    for obj, view in zip(job.scs, job.report.views, strict=True):
        sc = dcmread(obj.path)
        pixels = sc.pixel_array
        crop = _rgb(read_png(view.measured.segmented.crop.png_path))
        rows, columns = crop.shape[:2]
        assert sc.PhotometricInterpretation == "RGB"
        assert pixels.shape[0] > rows and pixels.shape[1] > columns and pixels.shape[2] == 3
        index = view.measured.features.index
        assert index is not None
        x0, y0, x1, y1 = index.box
        far = np.ones((rows, columns), dtype=bool)
        far[y0 - BOX_MARGIN : y1 + BOX_MARGIN, x0 - BOX_MARGIN : x1 + BOX_MARGIN] = False
        changed = np.any(pixels[:rows, :columns] != crop, axis=2)
        assert not changed[far].any()
        assert changed[y0:y1, x0:x1].mean() > 0.5  # the heatmap is blended into the box
        band = pixels[rows:]
        assert band.min() == 0 and band.max() == 255  # caption text on black
        bar = pixels[:rows, columns:].astype(int)
        assert (np.ptp(bar, axis=2) > 100).any()  # a coloured bar


def test_png_equals_the_sc_pixels(job: Job) -> None:
    for obj, view in zip(job.scs, job.report.views, strict=True):
        stem = view.measured.segmented.crop.png_path.stem
        png = cv2.imread(str(job.report.out_dir / f"{stem}_heatmap_overlay.png"))
        assert png is not None
        np.testing.assert_array_equal(
            cv2.cvtColor(png, cv2.COLOR_BGR2RGB), dcmread(obj.path).pixel_array
        )


def _seg_masks(obj: ReportObject, original: Dataset) -> NDArray[np.bool_]:
    seg = hd.seg.segread(obj.path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(original.SOPInstanceUID)], segment_numbers=[1, 2]
    )
    masks: NDArray[np.bool_] = pixels[0].astype(bool)
    return masks  # (rows, columns, 2): nodule, thyroid


def test_seg_gives_back_the_crop_masks_at_original_coordinates(job: Job) -> None:
    for obj, view in zip(job.segs, job.report.views, strict=True):
        segmented = view.measured.segmented
        original = dcmread(view.original)
        masks = _seg_masks(obj, original)
        assert masks.shape == (original.Rows, original.Columns, 2)
        area = segmented.crop.area
        for n, png in enumerate((segmented.nodule_mask, segmented.thyroid_mask)):
            expected = np.zeros(masks.shape[:2], dtype=bool)
            expected[area.y0 : area.y1, area.x0 : area.x1] = read_png(png, grey=True) > 0
            assert _iou(masks[..., n], expected) == 1.0


def test_seg_masks_lie_on_the_phantom_truth(two_views: Job) -> None:
    # Seed 1 only: there the demo segmenters reach IoU ~0.9; on seed 3 the demo nodule
    # segmenter itself reaches only ~0.4 (its crop mask, not the SEG placement).
    for obj, view in zip(two_views.segs, two_views.report.views, strict=True):
        truth = two_views.case.images[two_views.truth_index(view)]
        masks = _seg_masks(obj, dcmread(view.original))
        assert _iou(masks[..., 0], truth.nodule_mask) > 0.5
        assert _iou(masks[..., 1], truth.thyroid_mask) > 0.5


def test_seg_describes_its_segments_and_series(job: Job) -> None:
    for number, (obj, view) in enumerate(zip(job.segs, job.report.views, strict=True), start=1):
        seg = dcmread(obj.path)
        assert seg.StudyInstanceUID == job.case.datasets[0].StudyInstanceUID
        assert (seg.SeriesNumber, seg.InstanceNumber) == (SERIES_NUMBER["seg"], number)
        assert seg.SegmentationType == "BINARY"
        labels = [
            (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
            for s in seg.SegmentSequence
        ]
        assert labels == [("Thyroid nodule", "27925004"), ("Thyroid gland", "69748006")]
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == job.report.prediction.bundle_name
        assert algorithm.AlgorithmVersion == job.report.prediction.bundle_version
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == view.original_sop_instance_uid


def test_same_job_makes_the_same_uids(two_views: Job, one_view: Job, tmp_path: Path) -> None:
    again = _job(tmp_path, seed=1, job_id=1)
    uids = [o.sop_instance_uid for o in (*two_views.scs, *two_views.segs)]
    assert [o.sop_instance_uid for o in (*again.scs, *again.segs)] == uids
    other = {o.sop_instance_uid for o in (*one_view.scs, *one_view.segs)}
    assert other.isdisjoint(uids)


def test_long_captions_wrap_within_the_width() -> None:
    caption = "NOT FOR CLINICAL USE. LLNM probability 0.55 (positive at 0.50), risk stage 2 of 3"
    lines = wrap_text(caption, 400, 0.5)
    assert len(lines) == 2 and " ".join(lines) == caption
    assert all(cv2.getTextSize(line, FONT, 0.5, 1)[0][0] <= 400 for line in lines)


def test_render_heatmap_keeps_the_crop_at_the_top_left(two_views: Job) -> None:
    view = two_views.report.views[0]
    image = render_heatmap(view, "caption")
    crop = view.measured.segmented.crop
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[0] > crop.rows and image.shape[1] > crop.columns
    np.testing.assert_array_equal(image[:5, :5], _rgb(read_png(crop.png_path))[:5, :5])


def test_a_multi_frame_original_gets_a_framed_sc_and_no_seg(
    two_views: Job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    view = two_views.report.views[0]
    cine = dcmread(view.original)
    cine.SOPClassUID = cine.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    cine.NumberOfFrames, cine.PixelData = 2, cine.PixelData * 2
    cine.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
    report = replace(
        two_views.report,
        job=replace(two_views.report.job, work_dir=tmp_path),
        views=(replace(view, original=tmp_path / "cine.dcm"),),
    )
    assert build_seg(report) == ()
    assert "multi-frame" in caplog.text
    (sc,) = build_heatmap_scs(report)
    frame = view.measured.segmented.crop.frame_index + 1
    assert dcmread(sc.path).SourceImageSequence[0].ReferencedFrameNumber == frame
