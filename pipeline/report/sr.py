"""The Structured Reports the node sends to the PACS: a prediction, or a notice why not.

Both are Comprehensive SR in the *original* study: highdicom copies patient and
study from the original instances given as evidence.

Prediction SR (TID 1500 Measurement Report)
    One TID 1501 group for the study-level finding (metastasis in a lateral
    cervical lymph node: probability, threshold, positive/negative, risk stage,
    whether report text was used, each input's contribution in percent) and
    one TID 1410 planar ROI group per view the model used (the index nodule's
    outline on the original image, its size, capsule distance, position,
    echogenicity, taller-than-wide, the view plane). A "Qualitative
    Evaluations" container ends the document with the one-line result caption,
    which carries the clinical-use label (NOT FOR CLINICAL USE) when set.
Notices (failure, no nodule found)
    A root container with one text item saying that the analysis failed and
    why, or that no nodule was found so nothing was predicted, and the
    clinical-use label when set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from scipy import ndimage

from db.results import Prediction
from imaging.features.extract import Location, NoduleFeatures, ViewFeatures
from imaging.features.geometry import Unavailable
from imaging.identity import MANUFACTURER, SOFTWARE_VERSION
from imaging.png import read_png
from pipeline.report import codes
from pipeline.report.common import (
    SERIES_NUMBER,
    read_original,
    result_caption,
    save_object,
    series_description,
)
from pipeline.report.inputs import ReportInput, ReportObject, ReportView, object_uid

MODEL_NAME = "LLNM node"
_DEVICE_UID = generate_uid(entropy_srcs=["llnm-node device observer"])
_SIMPLIFY_PX = 1.0  # Douglas-Peucker tolerance of the outline, crop pixels
_MAX_REASON = 1000  # characters of a failure reason kept in the failure SR
_MAX_LISTED = 8  # excluded images named in a not-assessed SR


def build_sr(report: ReportInput) -> ReportObject:
    """Write the prediction SR of ``report`` to ``report.out_dir / "sr.dcm"``.

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError
        If an original instance cannot be read.
    StageError
        If a nodule mask PNG cannot be read.
    ValueError
        If a used view has no index nodule or an empty nodule mask.
    """
    prediction = report.prediction
    evidence = [read_original(view.original) for view in report.views]
    algorithm = hd.sr.AlgorithmIdentification(
        name=prediction.bundle_name, version=prediction.bundle_version, manufacturer=MANUFACTURER
    )
    position = _position([view.measured.features for view in report.views])
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [
        _prediction_group(report, evidence, algorithm),
        *(
            _view_group(report.job.job_id, number, view, image, algorithm, position)
            for number, (view, image) in enumerate(zip(report.views, evidence, strict=True), 1)
        ),
    ]
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(prediction),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
    )[0]
    content.ContentSequence.append(
        _qualitative_evaluations(
            result_caption(prediction, report.clinical_use_label),
            [f"Image not used: {line}" for line in report.not_used],
        )
    )
    dataset = _document(
        evidence,
        content,
        uids=(object_uid(report.job.job_id, "sr-series"), object_uid(report.job.job_id, "sr")),
        description=series_description("LLNM-Net AI result", report.clinical_use_label),
        equipment=[_equipment(prediction, report.clinical_use_label)],
    )
    return save_object(dataset, report.out_dir / "sr.dcm", "sr")


def failure_sr(
    evidence: Path, *, out_dir: Path, job_id: int, reason: str, clinical_use_label: str | None
) -> ReportObject:
    """Write a short SR saying the job's analysis failed to ``out_dir / "failure_sr.dcm"``.

    ``evidence`` is one original instance of the study (Part 10 file); the SR
    joins its study. A reason longer than 1000 characters is cut there and
    marked ``[...]``; characters outside ASCII become ``?`` (the study's
    character set is not known in advance).

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError
        If ``evidence`` cannot be read.
    """
    return _notice_sr(
        evidence,
        out_dir / "failure_sr.dcm",
        job_id=job_id,
        title=codes.ANALYSIS_FAILED,
        series_title="LLNM-Net analysis failed",
        text=f"LLNM-Net analysis of this study failed (job {job_id}): {_shorten(reason)}",
        clinical_use_label=clinical_use_label,
    )


def no_nodule_sr(
    evidence: Path, *, out_dir: Path, job_id: int, views: int, clinical_use_label: str | None
) -> ReportObject:
    """Write a short SR saying no nodule was found, so no LLNM prediction was made.

    Written to ``out_dir / "no_nodule_sr.dcm"``, in the study of ``evidence``.

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError
        If ``evidence`` cannot be read.
    """
    return _notice_sr(
        evidence,
        out_dir / "no_nodule_sr.dcm",
        job_id=job_id,
        title=codes.NO_NODULE_FOUND,
        series_title="LLNM-Net: no nodule found",
        text=(
            f"The nodule segmenter found no thyroid nodule in the {views} image(s) of this "
            f"study (job {job_id}); no LLNM prediction was made."
        ),
        clinical_use_label=clinical_use_label,
    )


def not_assessed_sr(
    evidence: Path,
    *,
    out_dir: Path,
    job_id: int,
    reason: str,
    excluded: Sequence[str],
    clinical_use_label: str | None,
) -> ReportObject:
    """Write a short SR saying the study was not assessed, why, and which images were left out.

    ``reason`` is the study's reason in words ("colour Doppler image"); ``excluded``
    one line per image left out. Written to ``out_dir / "not_assessed_sr.dcm"``.

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError
        If ``evidence`` cannot be read.
    """
    images = "; ".join(excluded[:_MAX_LISTED]) + ("; ..." if len(excluded) > _MAX_LISTED else "")
    return _notice_sr(
        evidence,
        out_dir / "not_assessed_sr.dcm",
        job_id=job_id,
        title=codes.NOT_ASSESSED,
        series_title="LLNM-Net: not assessed",
        text=_shorten(
            f"Not assessed: {reason}. The model assesses grey-scale B-mode thyroid views "
            f"like those it was trained on; this study (job {job_id}) had none, so no LLNM "
            f"prediction was made." + (f" Images not used: {images}." if images else "")
        ),
        clinical_use_label=clinical_use_label,
    )


def _notice_sr(
    evidence: Path,
    path: Path,
    *,
    job_id: int,
    title: Code,
    series_title: str,
    text: str,
    clinical_use_label: str | None,
) -> ReportObject:
    """A root container ``title`` holding ``text`` and the clinical-use label when set."""
    image = read_original(evidence)
    items = [text, clinical_use_label] if clinical_use_label else [text]
    root = hd.sr.ContainerContentItem(name=title)
    root.ContentSequence = hd.sr.ContentSequence([_text(codes.RESULT, item) for item in items])
    dataset = _document(
        [image],
        root,
        uids=(object_uid(job_id, path.stem, "series"), object_uid(job_id, path.stem)),
        description=series_description(series_title, clinical_use_label),
        equipment=[],
    )
    return save_object(dataset, path, "sr")


def nodule_outline(
    nodule_mask: NDArray[np.generic], index: NoduleFeatures, origin: tuple[int, int]
) -> NDArray[np.float64]:
    """The index nodule's outline as a closed polyline in original-image coordinates.

    The component of ``nodule_mask`` (crop resolution) that matches the index
    nodule's area and centroid is traced through its boundary pixels' centres,
    simplified (Douglas-Peucker, 1 pixel) and shifted by ``origin``, the crop's
    (x0, y0) in the original image. Coordinates follow the DICOM SCOORD
    convention: (column, row) with (0, 0) the top-left corner of the top-left
    pixel, so pixel (i, j) has its centre at (j + 0.5, i + 0.5). The first
    point is repeated at the end (a closed POLYLINE).
    """
    component = _index_component(np.asarray(nodule_mask != 0), index)
    contours, _ = cv2.findContours(
        component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    contour = max(contours, key=len)
    simplified = cv2.approxPolyDP(contour, _SIMPLIFY_PX, closed=True)
    points = (simplified if len(simplified) >= 3 else contour)[:, 0, :].astype(np.float64)
    points += np.asarray(origin, dtype=np.float64) + 0.5
    return np.vstack([points, points[:1]])


def _index_component(nodules: NDArray[np.bool_], index: NoduleFeatures) -> NDArray[np.bool_]:
    """The 8-connected component closest to the index nodule in area, then centroid."""
    labels, count = ndimage.label(nodules, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        raise ValueError("the nodule mask is empty")
    numbers = range(1, count + 1)
    areas = ndimage.sum_labels(nodules, labels, numbers)
    centres = ndimage.center_of_mass(nodules, labels, numbers)  # (row, column)
    cx, cy = index.centroid

    def mismatch(k: int) -> tuple[float, float]:
        row, col = centres[k]
        return abs(float(areas[k]) - index.area_px), float(np.hypot(col - cx, row - cy))

    best = min(range(count), key=mismatch)
    return np.asarray(labels == best + 1)


def _prediction_group(
    report: ReportInput, evidence: Sequence[Dataset], algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the study-level LLNM finding."""
    prediction = report.prediction
    verdict = codes.POSITIVE if prediction.positive else codes.NEGATIVE
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=object_uid(report.job.job_id, "sr-prediction"), identifier="LLNM prediction"
        ),
        finding_type=codes.METASTASIS,
        finding_sites=[hd.sr.FindingSite(codes.LATERAL_CERVICAL_LYMPH_NODE)],
        algorithm_id=algorithm,
        measurements=[
            _measure(codes.PROBABILITY, round(prediction.probability, 4), codes.NO_UNITS),
            _measure(codes.THRESHOLD, round(prediction.threshold, 4), codes.NO_UNITS),
            _measure(codes.RISK_STAGE, prediction.risk_stage, codes.NO_UNITS),
            *_contributions(prediction),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.PREDICTION, verdict),
            hd.sr.QualitativeEvaluation(
                codes.REPORT_TEXT_USED, codes.YES if prediction.report_text_used else codes.NO
            ),
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(image) for image in evidence
        ],
    )


def _contributions(prediction: Prediction) -> list[hd.sr.Measurement]:
    """Each input's share of the prediction in percent, in the model's group order."""
    return [
        _measure(code, round(prediction.contributions[group], 2), codes.PERCENT)
        for group, code in codes.CONTRIBUTION.items()
        if group in prediction.contributions
    ]


def _view_group(
    job_id: int,
    number: int,
    view: ReportView,
    image: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    position: hd.sr.FindingSite,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the index nodule of view ``number`` (1-based), outlined on its original."""
    features = view.measured.features
    index = features.index
    if index is None:
        raise ValueError(f"view {number} has no index nodule")
    crop = view.measured.segmented.crop
    outline = nodule_outline(
        read_png(view.measured.segmented.nodule_mask, grey=True),
        index,
        (crop.area.x0, crop.area.y0),
    )
    frames = [crop.frame_index + 1] if "NumberOfFrames" in image else None
    plane = features.view or f"view {number}"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=object_uid(job_id, "sr-nodule", str(number)),
            identifier=f"Index nodule, {plane}",
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(
                image, referenced_frame_numbers=frames
            ),
        ),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[position],
        algorithm_id=algorithm,
        measurements=_nodule_measurements(index),
        qualitative_evaluations=_nodule_evaluations(features, index),
    )


def _nodule_measurements(index: NoduleFeatures) -> list[hd.sr.Measurement]:
    """Length, width, capsule distance (mm, or pixels when uncalibrated), echogenicity."""
    shape, unit = (
        (index.shape_px, codes.PIXELS)
        if index.shape_mm is None
        else (index.shape_mm, codes.MILLIMETRE)
    )
    measurements = [
        _measure(codes.LENGTH, round(shape.length, 2), unit),
        _measure(codes.WIDTH, round(shape.width, 2), unit),
    ]
    if isinstance(index.location, Location):
        distance_unit = codes.MILLIMETRE if index.location.unit == "mm" else codes.PIXELS
        measurements.append(
            _measure(
                codes.CAPSULE_DISTANCE, round(index.location.capsule_distance, 2), distance_unit
            )
        )
    difference = index.echogenicity.difference
    if difference is not None:
        measurements.append(
            _measure(codes.ECHOGENICITY_DIFFERENCE, round(difference, 1), codes.GREY_LEVELS)
        )
    return measurements


def _nodule_evaluations(
    features: ViewFeatures, index: NoduleFeatures
) -> list[hd.sr.QualitativeEvaluation]:
    """Taller-than-wide and, when the features stage knew it, the view plane."""
    taller = codes.YES if index.shape_px.taller_than_wide else codes.NO
    evaluations = [hd.sr.QualitativeEvaluation(codes.TALLER_THAN_WIDE, taller)]
    if features.view is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(codes.IMAGE_VIEW, codes.PLANE[features.view])
        )
    return evaluations


def _position(views: Sequence[ViewFeatures]) -> hd.sr.FindingSite:
    """Thyroid lobe (from a transverse view) and third (from a longitudinal one) of the nodule.

    The index nodules of the views are taken to be the same nodule, as the
    model takes them; an unknown lobe gives the thyroid as the site.
    """
    indices = [view.index for view in views if view.index is not None]
    lobes = [n.lobe for n in indices if not isinstance(n.lobe, Unavailable)]
    thirds = [n.third for n in indices if not isinstance(n.third, Unavailable)]
    return hd.sr.FindingSite(
        codes.LOBE[lobes[0]] if lobes else codes.THYROID,
        topographical_modifier=codes.THIRD[thirds[0]] if thirds else None,
    )


def _measure(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=unit)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _qualitative_evaluations(caption: str, notes: Sequence[str]) -> hd.sr.ContainerContentItem:
    """TID 1500's closing "Qualitative Evaluations": the result caption, then ``notes``."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [_text(codes.RESULT, caption), *(_text(codes.RESULT, _shorten(n)) for n in notes)]
    )
    return container


def _observation_context(prediction: Prediction) -> hd.sr.ObservationContext:
    """The node as the (device) observer."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=_DEVICE_UID,
                name=MODEL_NAME,
                manufacturer_name=MANUFACTURER,
                model_name=f"{prediction.bundle_name} {prediction.bundle_version}",
            ),
        )
    )


def _equipment(prediction: Prediction, clinical_use_label: str | None) -> hd.ContributingEquipment:
    """The model bundle as contributing equipment.

    Its purpose is DCM 109102 "Processing Equipment": the node derived this
    object by processing the images. 109104 "De-identifying Equipment" would
    claim that this object was de-identified, but it belongs to the original,
    identified study.
    """
    description = (
        f"LLNM-Net model bundle {prediction.bundle_name} {prediction.bundle_version} "
        "predicted lateral lymph node metastasis"
    )
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=prediction.bundle_name,
        software_versions=prediction.bundle_version,
        contribution_description=f"{description}. {clinical_use_label}"
        if clinical_use_label
        else description,
    )


def _document(
    evidence: Sequence[Dataset],
    content: Dataset,
    *,
    uids: tuple[str, str],
    description: str,
    equipment: Sequence[hd.ContributingEquipment],
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR in the evidence's study; ``uids`` are (series, SOP instance)."""
    series_uid, sop_uid = uids
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        contributing_equipment=equipment,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        series_description=description,
        coding_schemes=[codes.SCHEME_IDENTIFICATION],
    )


def _shorten(reason: str) -> str:
    """``reason`` in ASCII, cut at :data:`_MAX_REASON` characters."""
    text = reason.strip().encode("ascii", "replace").decode("ascii")
    return text if len(text) <= _MAX_REASON else f"{text[: _MAX_REASON - 6]} [...]"
