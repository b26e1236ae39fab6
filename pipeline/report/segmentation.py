"""DICOM SEG of the nodule and thyroid masks, at the original images' resolution.

One SEG per used view
---------------------
Ultrasound images carry no patient coordinate system (no Frame of Reference,
Image Position or Orientation), so a segmentation frame can only be tied to
its source by reference and pixel-for-pixel alignment. highdicom therefore
accepts exactly one single-frame source image per SEG in that case (and one
series, one image size per SEG in any case); the two views of a study may
also differ in size or series. Each used view gets its own BINARY SEG in the
node's SEG series (``seg_{i}.dcm``, instance number i), with two segments:
the thyroid nodule and the thyroid gland. The crop's masks are placed at the
crop's offset in the original frame (zero outside the crop).

An original that is a multi-frame (cine) image cannot be the source of such a
SEG without a coordinate system: that view gets no SEG and a warning is
logged (the SEG is optional; the SR and heatmaps still describe it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from imaging.crop import ImageArea
from imaging.identity import MANUFACTURER, SOFTWARE_VERSION
from imaging.png import read_png
from pipeline.report.common import (
    SERIES_NUMBER,
    algorithm_equipment,
    copy_identity,
    read_original,
    save_object,
    series_description,
)
from pipeline.report.inputs import ReportInput, ReportObject, ReportView, object_uid

log = logging.getLogger(__name__)

MODEL_NAME = "LLNM-Net"
DEVICE_SERIAL_NUMBER = "none"  # software only: there is no hardware serial number


def segment_descriptions(report: ReportInput) -> tuple[hd.seg.SegmentDescription, ...]:
    """Segment 1: the thyroid nodule(s); segment 2: the thyroid gland (including nodules)."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=report.prediction.bundle_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=report.prediction.bundle_version,
    )
    nodule = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Thyroid nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Thyroid],
    )
    gland = hd.seg.SegmentDescription(
        segment_number=2,
        segment_label="Thyroid gland",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Thyroid,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    return nodule, gland


def full_frame_mask(mask_png: Path, area: ImageArea, rows: int, columns: int) -> NDArray[np.bool_]:
    """A crop's mask PNG placed at the crop's offset in a ``rows`` x ``columns`` frame."""
    crop_mask = read_png(mask_png, grey=True) > 0
    mask = np.zeros((rows, columns), dtype=bool)
    mask[area.y0 : area.y0 + crop_mask.shape[0], area.x0 : area.x0 + crop_mask.shape[1]] = crop_mask
    return mask


def _view_seg(report: ReportInput, view: ReportView, original: Dataset, number: int) -> Dataset:
    """The SEG of one view whose original is ``original`` (a single-frame image)."""
    segmented = view.measured.segmented
    shape = int(original.Rows), int(original.Columns)
    masks = [
        full_frame_mask(path, segmented.crop.area, *shape)
        for path in (segmented.nodule_mask, segmented.thyroid_mask)
    ]
    description = series_description("LLNM-Net masks", report.clinical_use_label)
    seg: Dataset = hd.seg.Segmentation(
        source_images=[original],
        pixel_array=np.stack(masks, axis=-1)[None],  # (frames, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(report),
        series_instance_uid=object_uid(report.job.job_id, "seg-series"),
        series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=object_uid(report.job.job_id, "seg", str(number)),
        instance_number=number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="LLNM_MASKS",
        content_description=description,
        series_description=description,
        omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            algorithm_equipment(report.algorithm, "segmented the nodule and the gland")
        ],
    )
    copy_identity(original, seg)
    seg.PatientOrientation = original.get("PatientOrientation", "")  # frames align with it
    return seg


def build_seg(report: ReportInput) -> tuple[ReportObject, ...]:
    """One DICOM SEG per used view (module docstring), written to ``out_dir/seg_{i}.dcm``.

    i counts the used views from 1 in the model's order; a view whose original
    is multi-frame is left out with a warning, so ``seg_{i}.dcm`` may skip an i.

    Raises
    ------
    StageError
        If a mask PNG cannot be read.
    """
    objects = []
    for number, view in enumerate(report.views, start=1):
        original = read_original(view.original, pixels=True)
        if int(original.get("NumberOfFrames", 1)) > 1:
            log.warning(
                "no SEG for view %d: its original %s is multi-frame",
                number,
                view.original_sop_instance_uid,
            )
            continue
        seg = _view_seg(report, view, original, number)
        objects.append(save_object(seg, report.out_dir / f"seg_{number}.dcm", "seg"))
    return tuple(objects)
