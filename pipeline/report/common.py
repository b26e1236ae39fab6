"""Pieces every report object shares: identity, the algorithm entry, the caption, saving."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
from pydicom import Dataset

from db.results import Prediction
from imaging.dicom_files import read_dataset
from imaging.identity import MANUFACTURER
from models.bundle import BundleIdentity
from pipeline.report import codes
from pipeline.report.inputs import ObjectKind, ReportObject

# Series numbers of the node's series in the original study (high, so they sort last).
SERIES_NUMBER: dict[ObjectKind, int] = {"sr": 9901, "sc": 9902, "seg": 9903}


# Type 2 attributes of the Patient and General Study modules: every result object must
# hold them, possibly empty; some consoles leave them out of their images.
_PATIENT_AND_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


# Patient and study attributes every result object carries exactly as its original has
# them (Patient, Patient Study and General Study modules), so that a PACS that files by
# patient ID and issuer, or shows the study description and age, files and shows the
# results with their study.
IDENTITY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "StudyDescription",
)


def read_original(path: Path, *, pixels: bool = False) -> Dataset:
    """An original instance to build a result object on, its missing Type 2 attributes empty.

    Its values are normalised as intake saw them (:mod:`imaging.header_values`).

    The file is not changed; highdicom copies patient and study from the returned data set.

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError
        If ``path`` cannot be read.
    """
    dataset = read_dataset(path, pixels=pixels)
    for keyword in _PATIENT_AND_STUDY_TYPE2:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def copy_identity(original: Dataset, made: Dataset) -> None:
    """Give ``made`` the patient and study attributes of ``original`` (:data:`IDENTITY_ATTRIBUTES`).

    An attribute the original lacks is left as the builder set it.
    """
    for keyword in IDENTITY_ATTRIBUTES:
        if keyword in original:
            setattr(made, keyword, copy.deepcopy(original[keyword].value))


def algorithm_equipment(algorithm: BundleIdentity, made: str) -> hd.ContributingEquipment:
    """The Contributing Equipment item that names the model, as IHE AI Results asks.

    Purpose "Processing Algorithm", the bundle's name as model name, its version
    as software version, and its device UID, which changes with any file of the
    bundle. ``made`` says what the algorithm made ("predicted ...", "found no ...").
    """
    description = f"LLNM-Net model bundle {algorithm.name} {algorithm.version} {made}"
    label = algorithm.clinical_use_label
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM_PROCESSING_EQUIPMENT,  # highdicom knows only CID 7005
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=f"{label}. {description}" if label else description,
    )
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.PROCESSING_ALGORITHM)]
    item.DeviceUID = algorithm.device_uid
    return item


def result_caption(prediction: Prediction, clinical_use_label: str | None) -> str:
    """The one line a radiologist reads first, the clinical-use label at its start.

    E.g. ``NOT FOR CLINICAL USE. LLNM probability 0.55 (positive at 0.50), risk stage 2 of 3``.
    """
    verdict = "positive" if prediction.positive else "negative"
    caption = (
        f"LLNM probability {prediction.probability:.2f} ({verdict} at "
        f"{prediction.threshold:.2f}), risk stage {prediction.risk_stage} of 3"
    )
    return f"{clinical_use_label}. {caption}" if clinical_use_label else caption


def series_description(title: str, clinical_use_label: str | None) -> str:
    """A Series Description (LO, at most 64 characters) that carries the label."""
    text = f"{title} - {clinical_use_label}" if clinical_use_label else title
    if len(text) > 64:
        raise ValueError(f"series description longer than 64 characters: {text!r}")
    return text


def save_object(dataset: Dataset, path: Path, kind: ObjectKind) -> ReportObject:
    """Write ``dataset`` as a Part 10 file (replacing an earlier run's) and describe it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    dataset.save_as(partial, enforce_file_format=True)
    partial.replace(path)
    return ReportObject(
        kind=kind,
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        description=str(dataset.get("SeriesDescription", "")),
    )
