"""DICOM headers of a phantom study: two Ultrasound Images and a Basic Text SR.

Images are Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6.1), Explicit
VR Little Endian, 8-bit MONOCHROME2 or RGB, with the Patient, General Study,
General Series, General Equipment, General Image, Image Pixel, US Image, US
Region Calibration (optional) and SOP Common modules, plus a vendor private
block (creator :data:`PRIVATE_CREATOR`, group 0x0009) whose values repeat
patient identifiers, as some scanners do. The region's Max X1/Y1 are the last
pixel inside the image area (DICOM coordinates are inclusive).

UIDs are derived from the case seed and options (:func:`uid`), so a case is
byte-for-byte reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)

from phantoms.patient import Encounter

BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
PRIVATE_CREATOR = "LLNM PHANTOM US 1"
PRIVATE_GROUP = 0x0009
_REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
_FINDINGS = ("121070", "DCM", "Findings")


def uid(*parts: object) -> UID:
    """A deterministic UID from the given parts (pydicom's root, SHA-512 of the parts)."""
    return generate_uid(entropy_srcs=["llnm-phantom", *(str(p) for p in parts)])


@dataclass(frozen=True)
class StudyIds:
    """The UIDs and numbers one phantom study uses."""

    study: UID
    image_series: UID
    report_series: UID
    frame_of_reference: UID

    @classmethod
    def derive(cls, key: str) -> StudyIds:
        """Derive all UIDs from ``key`` (the case seed and options)."""
        return cls(
            study=uid(key, "study"),
            image_series=uid(key, "series", "US"),
            report_series=uid(key, "series", "SR"),
            frame_of_reference=uid(key, "frame-of-reference"),
        )


# View Code Sequence items (SNOMED CT); kept by de-identification, read by the segment stage.
_VIEW_CODES = {
    "transverse": ("62824007", "SCT", "Transverse"),
    "longitudinal": ("38717003", "SCT", "Longitudinal"),
}


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _common(enc: Encounter, ids: StudyIds, sop_class: UID, sop_instance: UID) -> Dataset:
    """Patient, General Study, General Equipment and SOP Common attributes."""
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = enc.study_datetime.strftime("%Y%m%d")
    ds.InstanceCreationTime = enc.study_datetime.strftime("%H%M%S")
    ds.StudyDate = enc.study_datetime.strftime("%Y%m%d")
    ds.StudyTime = enc.study_datetime.strftime("%H%M%S")
    ds.AccessionNumber = enc.accession
    ds.InstitutionName = enc.institution
    ds.InstitutionAddress = enc.institution_address
    ds.ReferringPhysicianName = enc.referring_physician.dicom
    ds.StationName = enc.station_name
    ds.StudyDescription = "US THYROID - SYNTHETIC PHANTOM, NOT FOR CLINICAL USE"
    ds.PatientName = enc.patient.dicom
    ds.PatientID = enc.patient_id
    ds.IssuerOfPatientID = enc.issuer
    ds.PatientBirthDate = enc.birth_date.strftime("%Y%m%d")
    ds.PatientSex = enc.sex
    ds.PatientAge = f"{enc.age_years:03d}Y"
    ds.StudyInstanceUID = ids.study
    ds.StudyID = enc.accession[-6:]
    ds.Manufacturer = enc.manufacturer
    ds.ManufacturerModelName = enc.model
    ds.DeviceSerialNumber = enc.device_serial
    ds.SoftwareVersions = "PHANTOM 1.0"
    return ds


def add_private_block(ds: Dataset, enc: Encounter) -> tuple[str, ...]:
    """Add the vendor private block; returns the identifying texts it holds."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    note = f"Exam of {enc.patient.given} {enc.patient.family}, MRN {enc.patient_id}"
    block.add_new(0x01, "LO", enc.patient.dicom)
    block.add_new(0x02, "LT", note)
    block.add_new(0x03, "DS", "0.7")  # mechanical index: not identifying
    return enc.patient.dicom, note, f"{enc.patient.given} {enc.patient.family}"


@dataclass(frozen=True)
class ImageHeader:
    """Per-image values: which view, where the image area is, how big a pixel is."""

    view: str
    lobe: str
    instance_number: int
    image_area: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    spacing_mm: float
    frequency_khz: int
    with_regions: bool


def ultrasound_image(
    enc: Encounter, ids: StudyIds, key: str, header: ImageHeader, frame: NDArray[np.uint8]
) -> tuple[Dataset, tuple[str, ...]]:
    """An Ultrasound Image Storage dataset of ``frame`` (rows, columns[, 3]).

    Returns the dataset and the identifying texts of its private block.
    """
    sop = uid(key, "image", header.instance_number)
    ds = _common(enc, ids, UltrasoundImageStorage, sop)
    acquired = enc.study_datetime + timedelta(seconds=35 * header.instance_number)
    ds.Modality = "US"
    ds.SeriesInstanceUID = ids.image_series
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = "Thyroid"
    ds.BodyPartExamined = "NECK"
    ds.OperatorsName = enc.operator.dicom
    ds.InstanceNumber = header.instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.ContentTime = acquired.strftime("%H%M%S")
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SMALL PARTS", "0001"]
    ds.ImageComments = f"{header.lobe.upper()} LOBE {header.view.upper()}"
    ds.ViewCodeSequence = Sequence([_code(_VIEW_CODES[header.view])])
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.TransducerData = [enc.transducer, "", ""]
    set_pixels(ds, frame)
    if header.with_regions:
        ds.SequenceOfUltrasoundRegions = Sequence([_region(header)])
    private = add_private_block(ds, enc)
    return ds, private


def set_pixels(ds: Dataset, frame: NDArray[np.uint8]) -> None:
    """Store ``frame`` (rows, columns[, 3]) as 8-bit MONOCHROME2 or RGB pixel data of ``ds``."""
    rgb = frame.ndim == 3
    ds.Rows, ds.Columns = int(frame.shape[0]), int(frame.shape[1])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(frame).tobytes()


def _region(header: ImageHeader) -> Dataset:
    x0, y0, x1, y1 = header.image_area
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = x0
    region.RegionLocationMinY0 = y0
    region.RegionLocationMaxX1 = x1 - 1
    region.RegionLocationMaxY1 = y1 - 1
    region.ReferencePixelX0 = (x1 - x0) // 2
    region.ReferencePixelY0 = 0
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.PhysicalDeltaX = header.spacing_mm / 10.0
    region.PhysicalDeltaY = header.spacing_mm / 10.0
    region.TransducerFrequency = header.frequency_khz
    return region


def text_report(
    enc: Encounter, ids: StudyIds, key: str, text: str, images: tuple[Dataset, ...]
) -> Dataset:
    """A Basic Text SR in the same study: one TEXT item "Findings" holding ``text``.

    Its character set is ISO_IR 100 (Latin-1) when ``text`` fits, else ISO_IR 192 (UTF-8).
    """
    sop = uid(key, "report")
    ds = _common(enc, ids, BASIC_TEXT_SR, sop)
    if not _latin1(text):
        ds.SpecificCharacterSet = "ISO_IR 192"
    written = enc.study_datetime + timedelta(hours=2)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = ids.report_series
    ds.SeriesNumber = 900
    ds.SeriesDescription = "Report"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.InstanceNumber = 1
    ds.ContentDate = written.strftime("%Y%m%d")
    ds.ContentTime = written.strftime("%H%M%S")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(ids, images)])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(_REPORT_TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(_FINDINGS)])
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    return ds


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _evidence(ids: StudyIds, images: tuple[Dataset, ...]) -> Dataset:
    refs = []
    for image in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.SOPClassUID
        ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
        refs.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = ids.image_series
    series.ReferencedSOPSequence = Sequence(refs)
    study = Dataset()
    study.StudyInstanceUID = ids.study
    study.ReferencedSeriesSequence = Sequence([series])
    return study
