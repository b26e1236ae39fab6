"""Synthetic DICOM instances for tests: small, valid, with controllable UIDs and encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _base(
    sop_class: str, *, study_uid: str, series_uid: str, sop_uid: str, modality: str, patient_id: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC123"
    ds.InstitutionName = "General Hospital"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def ultrasound(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT001",
    rows: int = 64,
    columns: int = 80,
    seed: int = 0,
    sop_class: str = UltrasoundImageStorage,
    modality: str = "US",
) -> Dataset:
    """A grayscale ultrasound image with random speckle-like pixels."""
    ds = _base(
        sop_class,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        sop_uid=sop_uid or generate_uid(),
        modality=modality,
        patient_id=patient_id,
    )
    rng = np.random.default_rng(seed)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 255, size=(rows, columns), dtype=np.uint8).tobytes()
    return ds


def ct(**kwargs: str) -> Dataset:
    """A small CT image (a modality the node must refuse)."""
    ds = ultrasound(sop_class=CTImageStorage, modality="CT", **kwargs)  # type: ignore[arg-type]
    return ds


def text_report(*, study_uid: str, text: str, patient_id: str = "PAT001") -> Dataset:
    """A Basic Text SR carrying a radiology report."""
    ds = _base(
        BASIC_TEXT_SR,
        study_uid=study_uid,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        modality="SR",
        patient_id=patient_id,
    )
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "121070",
        "DCM",
        "Findings",
    )
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write as a Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
