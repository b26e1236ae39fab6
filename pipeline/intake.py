"""Study intake: the first stage; what arrived, what is usable, and the report text.

Scope gate: every ultrasound image's header goes through the site's scope
rules (:func:`imaging.scope.header_exclusion`: modality, allow/deny patterns),
its Sequence of Ultrasound Regions (:func:`imaging.scope.region_exclusion`:
Doppler, no B-mode region, split screen) and then its pixels
(:func:`imaging.scope.pixel_exclusion` on the frame the crop stage will use,
the middle one: colour overlay, split screen without regions). An excluded
image is not de-identified or analysed; a study whose images are all excluded
is not assessed (:mod:`pipeline.scope`).

Header values are normalised as they are read (:mod:`imaging.header_values`):
a date, time, number, age, name or character set that breaks its Value
Representation is dropped (the keywords are listed in ``repaired``; the intake
stage records them as a warning event, never the values), and the later stages
and the result objects read the same normalised values. An image whose pixel
module numbers (Rows, Number of Frames, ...) do not parse is skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import EventLevel
from imaging.crop import image_area
from imaging.decode import select_frame
from imaging.dicom_files import UnreadableDicomError, read_header
from imaging.errors import StageError
from imaging.header_values import pixel_module_problem
from imaging.scope import ScopeRules, header_exclusion, pixel_exclusion, region_exclusion
from imaging.scope_reasons import Exclusion
from imaging.sop_classes import SECONDARY_CAPTURE_CLASS, SR_CLASSES, ULTRASOUND_IMAGE_CLASSES
from models.llnm.report_text import sr_model_text
from pipeline.contracts import ExcludedImage, InstanceRef, Skipped, StudyInput, summarize_skipped
from pipeline.scope import NotAssessed, describe_excluded, gated, gated_summary, not_assessed
from pipeline.stage import Stage

DEFAULT_RULES = ScopeRules()


@dataclass(frozen=True)
class UltrasoundImage:
    """A usable ultrasound image (or cine) of the study."""

    ref: InstanceRef
    rows: int
    columns: int
    frames: int
    photometric_interpretation: str
    bits_allocated: int
    transfer_syntax_uid: str
    has_ultrasound_regions: bool


@dataclass(frozen=True)
class ReportDocument:
    """Radiology report text found in a structured report of the study.

    ``text`` is the model text (:func:`models.llnm.report_text.sr_model_text`):
    the report's TEXT item values without concept names, NFKC, spaces collapsed.
    """

    ref: InstanceRef
    text: str


@dataclass(frozen=True)
class SeriesCount:
    """How many instances a series contributed."""

    series_instance_uid: str
    modality: str
    instances: int


@dataclass(frozen=True)
class RepairedHeader:
    """The attributes whose values normalisation dropped in one instance (keywords only)."""

    sop_instance_uid: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class IntakeReport:
    """What the study holds, for the stages after intake."""

    SCHEMA_VERSION: ClassVar[int] = 3  # of the stage output file (pipeline.stage_outputs)

    study: StudyInput
    images: tuple[UltrasoundImage, ...]
    reports: tuple[ReportDocument, ...]
    series: tuple[SeriesCount, ...]
    skipped: tuple[Skipped, ...]
    excluded: tuple[ExcludedImage, ...] = ()  # by the scope rules; original UIDs
    repaired: tuple[RepairedHeader, ...] = ()


def summarize_intake(report: IntakeReport) -> dict[str, Any]:
    """Counts for the audit trail (no report text, no identifiers beyond UIDs)."""
    return {
        "instances": len(report.study.instances),
        "series": len(report.series),
        "ultrasound_images": len(report.images),
        "frames": sum(image.frames for image in report.images),
        "with_ultrasound_regions": sum(image.has_ultrasound_regions for image in report.images),
        "report_found": bool(report.reports),
        "report_characters": sum(len(r.text) for r in report.reports),
        "skipped": summarize_skipped(report.skipped),
        "excluded": describe_excluded(report.excluded),
        "repaired": repaired_keywords(report.repaired),
    }


def repaired_keywords(repaired: tuple[RepairedHeader, ...]) -> dict[str, int]:
    """How many instances had each attribute's value dropped, by keyword."""
    return dict(sorted(Counter(k for r in repaired for k in r.keywords).items()))


def record_repaired(session: Session, job_id: int, report: IntakeReport) -> IntakeReport:
    """A warning event naming the attributes whose values were dropped (never the values)."""
    if report.repaired:
        counts = repaired_keywords(report.repaired)
        record_event(
            session,
            kind="header.repaired",
            message="malformed header values dropped: " + ", ".join(counts),
            level=EventLevel.WARNING,
            job_id=job_id,
            detail={"instances": len(report.repaired), "attributes": counts},
        )
    return report


def _image_problem(sop_class: str, dataset: Dataset, has_pixels: bool) -> str | None:
    if sop_class == SECONDARY_CAPTURE_CLASS and dataset.get("Modality") != "US":
        return f"secondary capture of modality {dataset.get('Modality', 'unknown')}, not ultrasound"
    if not has_pixels:
        return "no Pixel Data"
    problem = pixel_module_problem(dataset)
    if problem:
        return problem
    if int(dataset.get("Rows", 0)) <= 0 or int(dataset.get("Columns", 0)) <= 0:
        return "zero image size"
    return None


def _exclusion(dataset: Dataset, path: Path, rules: ScopeRules) -> Exclusion | None:
    """The first scope rule the image breaks: header, regions, then pixels."""
    return header_exclusion(dataset, rules) or region_exclusion(dataset) or _pixels(path)


def _pixels(path: Path) -> Exclusion | None:
    """The pixel rules on the middle frame; None when it cannot be judged here.

    A frame that cannot be read, decoded or cropped is left to the later stages,
    which skip or fail such images with their own errors.
    """
    try:
        dataset = dcmread(path)
        frame = select_frame(dataset)
        return pixel_exclusion(frame.pixels, image_area(dataset, frame.pixels))
    except (StageError, InvalidDicomError, OSError, ValueError, EOFError):
        return None


def intake(
    study: StudyInput, rules: ScopeRules | None = DEFAULT_RULES
) -> IntakeReport | NotAssessed:
    """Read every instance's header and sort the study into images, reports and the rest.

    ``rules`` are the site's scope rules; None turns the header and region gate
    off (to study later stages on images the model would not assess).

    Raises
    ------
    StageError
        If the study holds no usable ultrasound image and none was excluded.
    """
    excluded: list[ExcludedImage] = []
    images: list[UltrasoundImage] = []
    reports: list[ReportDocument] = []
    skipped: list[Skipped] = []
    repaired: list[RepairedHeader] = []
    series: Counter[tuple[str, str]] = Counter()
    for ref in study.instances:
        try:
            header = read_header(ref.path)
        except (UnreadableDicomError, OSError) as exc:
            skipped.append(Skipped(ref.sop_instance_uid, f"unreadable: {exc}"))
            continue
        dataset = header.dataset
        if header.repaired:
            repaired.append(RepairedHeader(ref.sop_instance_uid, header.repaired))
        series[(ref.series_instance_uid, str(dataset.get("Modality", "")))] += 1
        if ref.sop_class_uid in SR_CLASSES:
            text = sr_model_text(dataset)
            if text is not None:
                reports.append(ReportDocument(ref=ref, text=text))
            else:
                skipped.append(Skipped(ref.sop_instance_uid, "structured report without text"))
            continue
        if (
            ref.sop_class_uid not in ULTRASOUND_IMAGE_CLASSES
            and ref.sop_class_uid != SECONDARY_CAPTURE_CLASS
        ):
            skipped.append(
                Skipped(ref.sop_instance_uid, f"SOP class {UID(ref.sop_class_uid).name}")
            )
            continue
        problem = _image_problem(ref.sop_class_uid, dataset, header.pixel_data is not None)
        if problem:
            skipped.append(Skipped(ref.sop_instance_uid, problem))
            continue
        exclusion = None if rules is None else _exclusion(dataset, ref.path, rules)
        if exclusion is not None:
            excluded.append(ExcludedImage(ref.sop_instance_uid, exclusion))
            continue
        images.append(
            UltrasoundImage(
                ref=ref,
                rows=int(dataset.Rows),
                columns=int(dataset.Columns),
                frames=int(dataset.get("NumberOfFrames", 1) or 1),
                photometric_interpretation=str(dataset.get("PhotometricInterpretation", "")),
                bits_allocated=int(dataset.get("BitsAllocated", 8)),
                transfer_syntax_uid=str(header.transfer_syntax_uid),
                has_ultrasound_regions="SequenceOfUltrasoundRegions" in dataset,
            )
        )
    if not images and excluded:
        return not_assessed(study.job_id, excluded)
    if not images:
        found = "; ".join(f"{s.sop_instance_uid}: {s.reason}" for s in skipped)
        if reports:
            found = "; ".join(filter(None, [f"{len(reports)} report(s)", found]))
        raise StageError(
            f"no usable ultrasound image among {len(study.instances)} instance(s)"
            + (f" ({found})" if found else "")
        )
    return IntakeReport(
        study=study,
        images=tuple(images),
        reports=tuple(reports),
        series=tuple(
            SeriesCount(series_instance_uid=uid, modality=modality, instances=n)
            for (uid, modality), n in series.items()
        ),
        skipped=tuple(skipped),
        excluded=tuple(excluded),
        repaired=tuple(repaired),
    )


def intake_stage(rules: ScopeRules) -> Stage[StudyInput, IntakeReport | NotAssessed]:
    """The intake stage with the site's scope ``rules``."""
    return Stage[StudyInput, IntakeReport | NotAssessed](
        name="intake",
        run=lambda study: intake(study, rules),
        summarize=gated_summary(summarize_intake),
        store=gated(record_repaired),
        output_type=IntakeReport,
    )


INTAKE = intake_stage(DEFAULT_RULES)
