"""The Structured Reports the node sends to the PACS: a prediction, or a notice why not.

Both are Comprehensive SR in the *original* study: highdicom copies patient and
study from the original instances given as evidence.

Prediction SR (TID 1500 Measurement Report), laid out so that common viewers open it
    Imaging Measurements holds one TID 1410 planar ROI group per view the model used,
    and nothing else: viewers (OHIF, Orthanc Stone) draw every group's region, and a
    group without one breaks them. Each group outlines the index nodule on its
    original image (SCOORD POLYLINE with an IMAGE child naming that one instance);
    its numeric values come most important first, because viewers label an outline
    with its first few: the study's LLNM probability, the nodule's long and short
    axis, its capsule distance and echogenicity difference, then the threshold and
    each input's contribution. Its coded values say the prediction (positive or
    negative), the risk stage, taller-than-wide, the view plane and whether report
    text was used. The closing "Qualitative Evaluations" container repeats the
    prediction and stage for the whole study and holds the one-line result caption,
    which starts with the clinical-use label (NOT FOR CLINICAL USE) when set.
Notices (failure, no nodule found, not assessed)
    A root container with one text item saying that the analysis failed and why,
    that no nodule was found, or that the study was not assessed; the clinical-use
    label comes first.

Every object names the model bundle in Contributing Equipment
(:func:`pipeline.report.common.algorithm_equipment`).
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

from db.results import Prediction
from imaging.features.extract import Location, NoduleFeatures, ViewFeatures, index_component
from imaging.features.geometry import Unavailable
from imaging.identity import MANUFACTURER, SOFTWARE_VERSION
from imaging.png import read_png
from models.bundle import BundleIdentity
from pipeline.report import codes
from pipeline.report.common import (
    SERIES_NUMBER,
    algorithm_equipment,
    copy_identity,
    read_original,
    result_caption,
    save_object,
    series_description,
)
from pipeline.report.inputs import ReportInput, ReportObject, ReportView, object_uid
from pipeline.report.population import (
    population_evaluations,
    population_line,
    population_measurements,
)

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
    groups = [
        _nodule_group(report, number, view, image, algorithm, position)
        for number, (view, image) in enumerate(zip(report.views, evidence, strict=True), 1)
    ]
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(prediction),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups,
    )[0]
    content.ContentSequence.append(_qualitative_evaluations(report))
    dataset = _document(
        evidence,
        content,
        uids=(object_uid(report.job.job_id, "sr-series"), object_uid(report.job.job_id, "sr")),
        description=series_description("LLNM-Net AI result", report.clinical_use_label),
        equipment=algorithm_equipment(report.algorithm, "predicted lateral lymph node metastasis"),
    )
    return save_object(dataset, report.out_dir / "sr.dcm", "sr")


def failure_sr(
    evidence: Path, *, out_dir: Path, job_id: int, reason: str, algorithm: BundleIdentity
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
        algorithm=algorithm,
        made="was to analyse this study; the analysis failed",
    )


def no_nodule_sr(
    evidence: Path, *, out_dir: Path, job_id: int, views: int, algorithm: BundleIdentity
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
        algorithm=algorithm,
        made="found no thyroid nodule",
    )


def not_assessed_sr(
    evidence: Path,
    *,
    out_dir: Path,
    job_id: int,
    reason: str,
    excluded: Sequence[str],
    algorithm: BundleIdentity,
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
        algorithm=algorithm,
        made="found the study outside its scope",
    )


def _notice_sr(
    evidence: Path,
    path: Path,
    *,
    job_id: int,
    title: Code,
    series_title: str,
    text: str,
    algorithm: BundleIdentity,
    made: str,
) -> ReportObject:
    """A root container ``title`` holding ``text``, the clinical-use label first when set."""
    image = read_original(evidence)
    label = algorithm.clinical_use_label
    root = hd.sr.ContainerContentItem(name=title)
    root.ContentSequence = hd.sr.ContentSequence(
        [_text(codes.RESULT, f"{label}. {text}" if label else text)]
    )
    dataset = _document(
        [image],
        root,
        uids=(object_uid(job_id, path.stem, "series"), object_uid(job_id, path.stem)),
        description=series_description(series_title, label),
        equipment=algorithm_equipment(algorithm, made),
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
    component = index_component(np.asarray(nodule_mask != 0), index)
    contours, _ = cv2.findContours(
        component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    contour = max(contours, key=len)
    simplified = cv2.approxPolyDP(contour, _SIMPLIFY_PX, closed=True)
    points = (simplified if len(simplified) >= 3 else contour)[:, 0, :].astype(np.float64)
    points += np.asarray(origin, dtype=np.float64) + 0.5
    return np.vstack([points, points[:1]])


def _contributions(prediction: Prediction) -> list[hd.sr.Measurement]:
    """Each input's share of the prediction in percent (|Shapley value| / sum), in group order."""
    return [
        _measure(code, round(prediction.contributions[group], 2), codes.PERCENT)
        for group, code in codes.CONTRIBUTION.items()
        if group in prediction.contributions
    ]


def _nodule_group(
    report: ReportInput,
    number: int,
    view: ReportView,
    image: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    position: hd.sr.FindingSite,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the index nodule of view ``number`` (1-based), outlined on its original.

    It carries the study's prediction first (module docstring), then the nodule's own values.
    """
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
    prediction = report.prediction
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=object_uid(report.job.job_id, "sr-nodule", str(number)),
            identifier=f"Index nodule, {plane}",
        ),
        referenced_region=_region(outline, image, frames),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[position],
        algorithm_id=algorithm,
        measurements=[
            # In percent: viewers print the unit's code, and "%" reads better than "1".
            _measure(codes.PROBABILITY, round(100 * prediction.probability, 2), codes.PERCENT),
            *_nodule_measurements(index),
            *population_measurements(view.measured),
            _measure(codes.THRESHOLD, round(100 * prediction.threshold, 2), codes.PERCENT),
            *_contributions(prediction),
        ],
        qualitative_evaluations=[
            *(hd.sr.QualitativeEvaluation(n, v) for n, v in _prediction_codes(prediction)),
            *_nodule_evaluations(features, index),
            *population_evaluations(view.measured),
        ],
    )


def _region(
    outline: NDArray[np.float64], image: Dataset, frames: list[int] | None
) -> hd.sr.ImageRegion:
    """The outline on ``image`` (and frame), its IMAGE item named DCM 111040 "Original Source".

    highdicom names that item SCT "Source"; Orthanc Stone draws a region only when
    the item carries DCM 111040, which TID 1410 allows as well.
    """
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            image, referenced_frame_numbers=frames
        ),
    )
    (source,) = region.ContentSequence
    source.ConceptNameCodeSequence = [hd.sr.CodedConcept.from_code(codes.ORIGINAL_SOURCE)]
    return region


def _prediction_codes(prediction: Prediction) -> list[tuple[Code, Code]]:
    """(name, value): positive or negative at the threshold, risk stage, report text used."""
    return [
        (codes.PREDICTION, codes.POSITIVE if prediction.positive else codes.NEGATIVE),
        (codes.RISK_STAGE, codes.STAGE[prediction.risk_stage]),
        (codes.REPORT_TEXT_USED, codes.YES if prediction.report_text_used else codes.NO),
    ]


def _nodule_measurements(index: NoduleFeatures) -> list[hd.sr.Measurement]:
    """Long and short axis, capsule distance (mm, or pixels when uncalibrated), echogenicity."""
    shape, unit = (
        (index.shape_px, codes.PIXELS)
        if index.shape_mm is None
        else (index.shape_mm, codes.MILLIMETRE)
    )
    measurements = [
        _measure(codes.LONG_AXIS, round(shape.length, 2), unit),
        _measure(codes.SHORT_AXIS, round(shape.width, 2), unit),
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


def _qualitative_evaluations(report: ReportInput) -> hd.sr.ContainerContentItem:
    """TID 1500's closing "Qualitative Evaluations": the study's prediction, then the text.

    The coded prediction and risk stage, the result caption (clinical-use label first),
    and one line per image of the study the model did not use.
    """
    prediction = report.prediction
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    coded = [
        hd.sr.CodeContentItem(
            name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for name, value in _prediction_codes(prediction)
    ]
    notes = [
        *(population_line(v.measured) for v in report.views),
        *(f"Image not used: {line}" for line in report.not_used),
    ]
    container.ContentSequence = hd.sr.ContentSequence(
        [
            *coded,
            _text(codes.RESULT, result_caption(prediction, report.clinical_use_label)),
            *(_text(codes.RESULT, _shorten(note)) for note in notes if note),
        ]
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


def _document(
    evidence: Sequence[Dataset],
    content: Dataset,
    *,
    uids: tuple[str, str],
    description: str,
    equipment: hd.ContributingEquipment,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR in the evidence's study; ``uids`` are (series, SOP instance).

    Patient and study come from the first evidence instance (:func:`copy_identity`).
    """
    series_uid, sop_uid = uids
    document = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        contributing_equipment=[equipment],
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        series_description=description,
        coding_schemes=[codes.SCHEME_IDENTIFICATION, codes.IHE_SCHEME_IDENTIFICATION],
    )
    copy_identity(evidence[0], document)
    return document


def _shorten(reason: str) -> str:
    """``reason`` in ASCII, cut at :data:`_MAX_REASON` characters."""
    text = reason.strip().encode("ascii", "replace").decode("ascii")
    return text if len(text) <= _MAX_REASON else f"{text[: _MAX_REASON - 6]} [...]"
