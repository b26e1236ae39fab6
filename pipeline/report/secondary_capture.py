"""Secondary Capture heatmaps: one RGB image per used view, in the original study.

Each SC shows :func:`pipeline.report.heatmap.render_heatmap` (caption and
colour bar burned in, so Burned In Annotation is YES), belongs to the original
patient and study (copied from the original instance), lies in the node's own
heatmap series and points at the original image (and frame) it was derived
from. The same pixels are written as a PNG next to it for people without a
DICOM viewer.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from imaging.identity import MANUFACTURER, SOFTWARE_VERSION
from imaging.png import write_png
from pipeline.report.common import (
    SERIES_NUMBER,
    algorithm_equipment,
    copy_identity,
    read_original,
    result_caption,
    save_object,
    series_description,
)
from pipeline.report.heatmap import RGB8, render_heatmap
from pipeline.report.inputs import ReportInput, ReportObject, ReportView, object_uid

# highdicom needs a patient orientation to build an SC in the PATIENT coordinate
# system; it is replaced by the original image's (usually empty: unknown).
_PLACEHOLDER_ORIENTATION = ("A", "F")


def source_image_item(view: ReportView, original: Dataset) -> Dataset:
    """A Source Image Sequence item for the original image (and frame) of ``view``."""
    item = Dataset()
    item.ReferencedSOPClassUID = original.SOPClassUID
    item.ReferencedSOPInstanceUID = original.SOPInstanceUID
    if "NumberOfFrames" in original:
        item.ReferencedFrameNumber = view.measured.segmented.crop.frame_index + 1
    purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def derivation_description(report: ReportInput) -> str:
    """What was made from the source image, with the clinical-use label when there is one."""
    label = f" {report.clinical_use_label}." if report.clinical_use_label else ""
    return (
        f"Grad-CAM++ heatmap of {report.prediction.bundle_name} "
        f"{report.prediction.bundle_version} over the cropped ultrasound image area.{label}"
    )


def heatmap_sc(report: ReportInput, view: ReportView, number: int, pixels: RGB8) -> hd.sc.SCImage:
    """The Secondary Capture of ``pixels`` (the rendered heatmap of ``view``)."""
    return derived_sc(
        report, view, number, pixels, "made this Grad-CAM++ heatmap", derivation_description(report)
    )


def derived_sc(
    report: ReportInput, view: ReportView, number: int, pixels: RGB8, purpose: str, derivation: str
) -> hd.sc.SCImage:
    """An RGB Secondary Capture ``number`` of the heatmap series, derived from ``view``'s image.

    ``purpose`` completes "the algorithm ..." in Contributing Equipment;
    ``derivation`` is the Derivation Description.
    """
    original = read_original(view.original)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=original,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=object_uid(report.job.job_id, "sc-series"),
        series_number=SERIES_NUMBER["sc"],
        sop_instance_uid=object_uid(report.job.job_id, "sc", str(number)),
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("LLNM-Net heatmaps", report.clinical_use_label),
        software_versions=SOFTWARE_VERSION,
        contributing_equipment=[algorithm_equipment(report.algorithm, purpose)],
    )
    copy_identity(original, sc)
    sc.PatientOrientation = original.get("PatientOrientation", "")
    sc.ImageLaterality = "U"  # the thyroid is an unpaired body part
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = result_caption(report.prediction, report.clinical_use_label)
    sc.DerivationDescription = derivation
    sc.SourceImageSequence = DicomSequence([source_image_item(view, original)])
    return sc


def build_heatmap_scs(report: ReportInput) -> tuple[ReportObject, ...]:
    """One heatmap Secondary Capture per used view, with its PNG.

    Writes ``out_dir/sc_{i}.dcm`` (i from 1, in the model's view order) and
    ``out_dir/{stem}_heatmap_overlay.png`` (stem: the crop's file stem).

    Raises
    ------
    StageError
        If a crop, mask or heatmap PNG cannot be read.
    OSError
        If a PNG cannot be written.
    """
    caption = result_caption(report.prediction, report.clinical_use_label)
    objects = []
    report.out_dir.mkdir(parents=True, exist_ok=True)
    for number, view in enumerate(report.views, start=1):
        pixels = render_heatmap(view, caption)
        stem = view.measured.segmented.crop.png_path.stem
        write_png(report.out_dir / f"{stem}_heatmap_overlay.png", pixels)
        sc = heatmap_sc(report, view, number, pixels)
        objects.append(save_object(sc, report.out_dir / f"sc_{number}.dcm", "sc"))
    return tuple(objects)
