"""The de-identification stage: per-image cleaning, the result, its summary and the store.

:func:`deidentify` reads the study's images and reports, cleans each image
into ``work_dir / "deid"`` and gathers the model inputs; :data:`DEIDENTIFY`
is the stage with the default options, :func:`deidentify_stage` one with
others.
"""

from __future__ import annotations

import enum
import functools
import secrets
import struct
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from sqlalchemy.orm import Session

from db.pseudonyms import PseudonymEntry, save_pseudonyms
from imaging.dicom_files import read_dataset
from imaging.errors import StageError
from models.llnm.report_text import model_text
from pipeline.contracts import (
    DeidentifiedImage,
    DeidentifiedStudy,
    ExcludedImage,
    JobContext,
    ModelInputs,
)
from pipeline.deidentify.headers import HeaderCleaner
from pipeline.deidentify.identifiers import identifier_pattern, patient_identifiers
from pipeline.deidentify.model_inputs import age_years, redact, sex
from pipeline.deidentify.options import (
    DEFAULT_OPTIONS,
    DeidentificationOptions,
    LongitudinalDates,
)
from pipeline.deidentify.pixels import (
    MIN_AREA_FRACTION,
    decode_pixels,
    detected_area,
    region_area,
    set_pixels,
)
from pipeline.deidentify.pseudonyms import Pseudonymizer
from pipeline.intake import IntakeReport, UltrasoundImage
from pipeline.stage import Stage


@dataclass(frozen=True)
class Deidentification:
    """The stage's result: the study for later stages, and the map only the database keeps."""

    study: DeidentifiedStudy
    pseudonyms: tuple[PseudonymEntry, ...]
    options: DeidentificationOptions
    method_codes: tuple[str, ...]  # CID 7050 code values in the copies
    attribute_actions: dict[str, int]  # how many attributes each action affected
    cleaned_to_regions: int
    cleaned_by_detector: int
    unusable_images: tuple[str, ...]  # why images were not passed on (no identifiers)
    report_redactions: int


def _read(path: Path, label: str, *, pixels: bool) -> Dataset:
    try:
        return read_dataset(path, pixels=pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error, OSError) as exc:
        raise StageError(f"{label}: file cannot be read ({type(exc).__name__})") from exc


def _method_codes(options: DeidentificationOptions) -> list[tuple[str, str]]:
    codes = [
        ("113100", "Basic Application Confidentiality Profile"),
        ("113101", "Clean Pixel Data Option"),
    ]
    if options.longitudinal_dates is LongitudinalDates.FULL:
        codes.append(("113106", "Retain Longitudinal Temporal Information Full Dates Option"))
    if options.longitudinal_dates is LongitudinalDates.MODIFIED:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    if options.retain_patient_characteristics:
        codes.append(("113108", "Retain Patient Characteristics Option"))
    return codes


def _mark_deidentified(dataset: Dataset, options: DeidentificationOptions) -> None:
    codes = _method_codes(options)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning[:64] for _, meaning in codes]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    dataset.BurnedInAnnotation = "NO"
    dataset.LongitudinalTemporalInformationModified = {
        LongitudinalDates.REMOVE: "REMOVED",
        LongitudinalDates.MODIFIED: "MODIFIED",
        LongitudinalDates.FULL: "UNMODIFIED",
    }[options.longitudinal_dates]


def _write(dataset: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(dataset.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(dataset.SOPInstanceUID))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    dataset.save_as(path, enforce_file_format=True)


def deidentify(
    report: IntakeReport, options: DeidentificationOptions = DEFAULT_OPTIONS
) -> Deidentification:
    """De-identify the study's ultrasound images into ``work_dir / "deid"``.

    Raises
    ------
    StageError
        If an image cannot be read or decoded, or no image has a usable image area.
    """
    study = report.study
    labels = [f"image {n}" for n in range(1, len(report.images) + 1)]
    headers = [
        _read(image.ref.path, label, pixels=False)
        for image, label in zip(report.images, labels, strict=True)
    ]
    report_headers = [
        _read(document.ref.path, f"report {n + 1}", pixels=False)
        for n, document in enumerate(report.reports)
    ]
    identifiers = patient_identifiers([*headers, *report_headers])
    pseudonyms = Pseudonymizer(options.secret or secrets.token_bytes(32))
    cleaner = HeaderCleaner(
        options=options,
        pseudonyms=pseudonyms,
        identifiers=identifier_pattern(identifiers, loose=True),
    )
    out_dir = study.work_dir / "deid"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.dcm"):
        stale.unlink()

    images: list[DeidentifiedImage] = []
    unusable: list[str] = []
    by_regions = by_detector = 0
    for image, label in zip(report.images, labels, strict=True):
        path = out_dir / f"{len(images) + 1}.dcm"
        result = _deidentify_image(image, label, cleaner, options, path)
        if isinstance(result, str):
            unusable.append(result)
            continue
        images.append(result)
        by_regions += result.has_ultrasound_regions
        by_detector += not result.has_ultrasound_regions
    if not images:
        raise StageError("no image has a usable image area: " + "; ".join(unusable))

    texts = model_text(document.text for document in report.reports)
    report_text, redactions = redact(texts or "", identifier_pattern(identifiers, loose=False))
    all_headers = [*headers, *report_headers]
    inputs = ModelInputs(
        age_years=next((a for a in map(age_years, all_headers) if a is not None), None),
        sex=next((s for s in map(sex, all_headers) if s is not None), None),
        report_text=None if texts is None else report_text,
    )
    return Deidentification(
        study=DeidentifiedStudy(
            job=JobContext(
                job_id=study.job_id,
                work_dir=study.work_dir,
                inputs=inputs,
                bundle_dir=study.bundle_dir,
            ),
            study_instance_uid=pseudonyms.uid(study.study_instance_uid),
            images=tuple(images),
            excluded=tuple(
                ExcludedImage(pseudonyms.uid(e.sop_instance_uid), e.exclusion)
                for e in report.excluded
            ),
        ),
        pseudonyms=pseudonyms.entries(),
        options=options,
        method_codes=tuple(code for code, _ in _method_codes(options)),
        attribute_actions=dict(cleaner.actions),
        cleaned_to_regions=by_regions,
        cleaned_by_detector=by_detector,
        unusable_images=tuple(unusable),
        report_redactions=redactions,
    )


def _deidentify_image(
    image: UltrasoundImage,
    label: str,
    cleaner: HeaderCleaner,
    options: DeidentificationOptions,
    path: Path,
) -> DeidentifiedImage | str:
    """Clean one image into a file at ``path``; a string says why it is not usable."""
    dataset = _read(image.ref.path, label, pixels=True)
    if "PixelData" not in dataset:
        raise StageError(f"{label}: no Pixel Data")
    pixels = decode_pixels(dataset, label)
    rows, columns = pixels.array.shape[1:3]
    has_regions = "SequenceOfUltrasoundRegions" in dataset
    if has_regions:
        area = region_area(dataset, rows, columns)
        if not area.any():
            return f"{label}: its ultrasound regions hold no 2D region"
    else:
        area = detected_area(pixels)
        if area.sum() < MIN_AREA_FRACTION * rows * columns:
            return f"{label}: no image area found (no ultrasound regions)"
    pixels.array[:, ~area] = 0
    out = cleaner.clean(dataset)
    if "SOPInstanceUID" not in out or "SOPClassUID" not in out:
        raise StageError(f"{label}: no SOP Instance UID or SOP Class UID")
    set_pixels(out, pixels, multi_frame="NumberOfFrames" in dataset)
    _mark_deidentified(out, options)
    _write(out, path)
    return DeidentifiedImage(
        path=path,
        sop_instance_uid=str(out.SOPInstanceUID),
        frames=pixels.array.shape[0],
        rows=rows,
        columns=columns,
        has_ultrasound_regions=has_regions,
    )


def summarize_deidentification(result: Deidentification) -> dict[str, Any]:
    """Counts and options for the audit trail: no identifiers, original or pseudonymous."""
    kinds = Counter(entry.kind.value for entry in result.pseudonyms)
    inputs = result.study.job.inputs
    return {
        "images_written": len(result.study.images),
        "frames": sum(image.frames for image in result.study.images),
        "cleaned_to_ultrasound_regions": result.cleaned_to_regions,
        "cleaned_by_detected_area": result.cleaned_by_detector,
        "unusable_images": list(result.unusable_images),
        "options": {
            k: (v.value if isinstance(v, enum.Enum) else v)
            for k, v in asdict(result.options).items()
            if k != "secret"
        },
        "site_secret": result.options.secret is not None,
        "method_codes": list(result.method_codes),
        "attribute_actions": dict(sorted(result.attribute_actions.items())),
        "pseudonyms": dict(sorted(kinds.items())),
        "model_inputs": {
            "age": inputs.age_years is not None,
            "sex": inputs.sex is not None,
            "report_text": inputs.report_text is not None,
            "report_redactions": result.report_redactions,
        },
    }


def keep_pseudonyms(session: Session, job_id: int, result: Deidentification) -> DeidentifiedStudy:
    """Store the pseudonym map in the job database; only the study goes on."""
    save_pseudonyms(session, job_id=job_id, entries=result.pseudonyms)
    return result.study


def deidentify_stage(options: DeidentificationOptions) -> Stage[IntakeReport, Deidentification]:
    """The stage with non-default options."""
    return Stage[IntakeReport, Deidentification](
        name="deidentify",
        run=functools.partial(deidentify, options=options),
        summarize=summarize_deidentification,
        store=keep_pseudonyms,
        output_type=DeidentifiedStudy,
    )


DEIDENTIFY = deidentify_stage(DEFAULT_OPTIONS)
