"""De-identification: Table E.1-1 actions, UID consistency, options, pixels, PHI scans, the map."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from db.models import Job, Patient, PseudonymKind, Study
from db.pseudonyms import PseudonymEntry, pseudonyms_for_job, save_pseudonyms
from db.session import Database
from dicom_factory import text_report, ultrasound, write
from imaging.dicom_files import read_header
from imaging.errors import StageError
from imaging.standard.basic_profile import PATTERN_ROWS
from phantoms import PhantomOptions, make_case
from pipeline.contracts import InstanceRef, StudyInput
from pipeline.deidentify import (
    DEIDENTIFY,
    REDACTED,
    Deidentification,
    DeidentificationOptions,
    LongitudinalDates,
    deidentify,
    summarize_deidentification,
)
from pipeline.deidentify.confidentiality_profile import RULES
from pipeline.intake import IntakeReport, intake


def _intake(tmp_path: Path, datasets: list[Dataset]) -> IntakeReport:
    refs = []
    for n, ds in enumerate(datasets):
        path = write(ds, tmp_path / "spool" / f"{n}.dcm")
        refs.append(InstanceRef.of(ds, path))
    study = StudyInput(
        job_id=7,
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        instances=tuple(refs),
        work_dir=tmp_path / "work",
    )
    report = intake(study)
    assert isinstance(report, IntakeReport)
    return report


def _walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element, including the file meta and everything inside sequences."""
    if hasattr(ds, "file_meta"):
        yield from ds.file_meta
    yield from ds.iterall()


def _element_texts(ds: Dataset) -> list[str]:
    texts = []
    for element in _walk(ds):
        if element.VR in ("SQ", "OB", "OW", "UN"):
            continue
        value = element.value
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        texts += [str(item) for item in items]
    return texts


def _header_bytes(path: Path) -> bytes:
    """The file's bytes before its Pixel Data element."""
    header = read_header(path)
    raw = path.read_bytes()
    return raw if header.pixel_data is None else raw[: header.pixel_data.offset]


def _pattern(value: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """``value`` as a search pattern; a number must not be part of a longer digit run.

    The pseudonymous UIDs are random digit strings, so a short number such as a
    patient ID of "204" turns up inside them by chance; it is PHI only on its own.
    """
    escaped = re.escape(value)
    if value.replace(".", "").isdigit():
        escaped = rf"(?<![0-9]){escaped}(?![0-9])"
    return re.compile(escaped, re.IGNORECASE if ignore_case else 0)


def _assert_absent(strings: list[str], result: Deidentification) -> None:
    """None of ``strings`` is in any element, header byte or the summary (pixels: elsewhere)."""
    summary = json.dumps(summarize_deidentification(result))
    for image in result.study.images:
        ds = dcmread(image.path)
        texts = "\n".join(_element_texts(ds))
        raw = image.path.read_bytes()
        header = _header_bytes(image.path).decode("latin-1")
        for s in strings:
            pattern = _pattern(s)
            assert not _pattern(s, ignore_case=True).search(texts), s
            assert not pattern.search(header), s
            # Short strings turn up by chance among millions of pixel bytes.
            assert len(s) < 5 or s.encode() not in raw, s
            assert not pattern.search(summary), s


# --- Table E.1-1 -------------------------------------------------------------------------------


def test_profile_table_has_the_standard_actions() -> None:
    assert len(RULES) > 600
    expected = {
        0x00100010: "Z",  # Patient's Name
        0x00100020: "Z/D",  # Patient ID (Z before 2024b)
        0x00100030: "Z",  # Patient's Birth Date
        0x00080050: "Z",  # Accession Number
        0x00080090: "Z",  # Referring Physician's Name
        0x00200010: "Z",  # Study ID
        0x00101000: "X",  # Other Patient IDs
        0x00101040: "X",  # Patient's Address
        0x00081030: "X",  # Study Description
        0x0008103E: "X",  # Series Description
        0x00204000: "X",  # Image Comments
        0x00880200: "X",  # Icon Image Sequence
        0x00080080: "X/Z/D",  # Institution Name
        0x00081010: "X/Z/D",  # Station Name
        0x00081070: "X/Z/D",  # Operators' Name
        0x00181000: "X/Z/D",  # Device Serial Number
        0x0008002A: "X/Z/D",  # Acquisition DateTime
        0x00080022: "X/Z",  # Acquisition Date
        0x00080021: "X/D",  # Series Date
        0x00181030: "X/D",  # Protocol Name
        0x00080023: "Z/D",  # Content Date
        0x00081140: "X/Z/U*",  # Referenced Image Sequence
        0x00082112: "X/Z/U*",  # Source Image Sequence
        0x0040A123: "D",  # Person Name
        0x0040A730: "D",  # Content Sequence
        0x0020000D: "U",  # Study Instance UID
        0x0020000E: "U",  # Series Instance UID
        0x00080018: "U",  # SOP Instance UID
        0x00200052: "U",  # Frame of Reference UID
        0x00081155: "U",  # Referenced SOP Instance UID
        0x00020003: "U",  # Media Storage SOP Instance UID
    }
    assert {tag: RULES[tag].basic for tag in expected} == expected
    assert RULES[0x00101010].patient_characteristics == "K"  # Patient's Age
    assert RULES[0x00100040].patient_characteristics == "K"  # Patient's Sex
    assert RULES[0x00102110].patient_characteristics == "C"  # Allergies
    assert RULES[0x00080020].temporal and RULES[0x00080030].temporal  # Study Date/Time
    assert not RULES[0x00100030].temporal  # Birth Date: no option keeps it


def test_profile_pattern_rows_are_the_safety_nets_of_the_header_cleaner() -> None:
    # Rows naming groups of attributes are not in RULES: the header cleaner removes private
    # attributes, curves and overlays outright. A new edition adding a pattern row needs a rule.
    assert {(row.pattern, row.basic) for row in PATTERN_ROWS} == {
        ("(50xx,xxxx)", "X"),
        ("(60xx,3000)", "X"),
        ("(60xx,4000)", "X"),
        ("PRIVATE", "X"),
    }


def _rich_instance(**kwargs: Any) -> Dataset:
    ds = ultrasound(**kwargs)
    ds.OtherPatientIDs = "OTHER-99"
    ds.PatientAge = "052Y"
    ds.PatientWeight = "61"
    ds.InstitutionAddress = "1 Main Street"
    ds.StationName = "US-ROOM-3"
    ds.OperatorsName = "Smith^Operator"
    ds.DeviceSerialNumber = "SN-4711"
    ds.StudyDescription = "Thyroid Doe"
    ds.ImageComments = "call Jane at home"
    ds.SeriesDate = "20261120"
    ds.ContentDate = "20261120"
    ds.ContentTime = "101600"
    ds.AcquisitionDateTime = "20261120101600"
    ds.InstanceCreationDate = "20261121"
    ds.Manufacturer = "Acme"
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.ReferencedPatientPhotoSequence = Sequence([Dataset()])
    ds.add_new(0x60000010, "US", 64)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\0" * 8)
    block = ds.private_block(0x0009, "ACME 1", create=True)
    block.add_new(0x01, "LO", "Doe^Jane")
    return ds


def test_attributes_get_their_table_actions(tmp_path: Path) -> None:
    ds = _rich_instance(patient_id="PAT001", seed=1)
    result = deidentify(_intake(tmp_path, [ds]))
    out = dcmread(result.study.images[0].path)

    for removed in (
        "OtherPatientIDs",
        "PatientAge",
        "PatientWeight",
        "InstitutionAddress",
        "StationName",
        "OperatorsName",
        "DeviceSerialNumber",
        "InstitutionName",
        "StudyDescription",
        "ImageComments",
        "SeriesDate",
        "AcquisitionDateTime",
        "InstanceCreationDate",
        "ReferencedPatientPhotoSequence",
    ):
        assert removed not in out, removed
    for emptied in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyID"):
        assert emptied in out and not out[emptied].value, emptied
    assert out.ContentDate == "" and out.ContentTime == ""
    assert not any(element.tag.is_private for element in out.iterall())
    assert not any(element.tag.group == 0x6000 for element in out)
    assert out.PatientID.startswith("P") and len(out.PatientID) == 16
    assert out.AccessionNumber.startswith("A") and out.AccessionNumber != "ACC123"
    assert out.Manufacturer == "Acme"  # not in the table: kept
    assert out.Modality == "US" and out.SOPClassUID == ds.SOPClassUID

    assert out.PatientIdentityRemoved == "YES"
    assert out.BurnedInAnnotation == "NO"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    codes = [
        (c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence
    ]
    assert codes == [("113100", "DCM"), ("113101", "DCM")]
    assert len(out.DeidentificationMethod) == 2
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert result.study.job.inputs.age_years == 52.0 and result.study.job.inputs.sex == "F"


def test_uids_are_replaced_consistently_across_the_study(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    first = _rich_instance(study_uid=study, series_uid=series, seed=1)
    second = _rich_instance(study_uid=study, series_uid=series, seed=2)
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    originals = [study, series, str(first.SOPInstanceUID), str(second.SOPInstanceUID), "1.2.3.4.5"]

    result = deidentify(_intake(tmp_path, [first, second]))
    a, b = (dcmread(image.path) for image in result.study.images)

    assert a.StudyInstanceUID == b.StudyInstanceUID == result.study.study_instance_uid
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID
    for out in (a, b):
        for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID):
            assert re.fullmatch(r"2\.25\.[1-9]\d*", uid) and len(uid) <= 64
    _assert_absent(originals, result)
    mapped = {e.original: e.pseudonym for e in result.pseudonyms if e.kind is PseudonymKind.UID}
    assert mapped[study] == a.StudyInstanceUID
    assert mapped[str(first.SOPInstanceUID)] == a.SOPInstanceUID

    again = deidentify(_intake(tmp_path / "again", [first, second]))
    assert again.study.study_instance_uid != result.study.study_instance_uid  # fresh salt
    secret = DeidentificationOptions(secret=b"site secret")
    one, two = (deidentify(_intake(tmp_path / n, [first]), secret) for n in ("s1", "s2"))
    assert one.study.study_instance_uid == two.study.study_instance_uid


# --- options -----------------------------------------------------------------------------------


def test_modified_dates_shift_by_one_per_patient_offset(tmp_path: Path) -> None:
    study = generate_uid()
    first = _rich_instance(study_uid=study, seed=1)
    second = _rich_instance(study_uid=study, seed=2)
    second.StudyDate = "20261119"
    options = DeidentificationOptions(longitudinal_dates=LongitudinalDates.MODIFIED)
    result = deidentify(_intake(tmp_path, [first, second]), options)
    offsets = [e for e in result.pseudonyms if e.kind is PseudonymKind.DATE_OFFSET]
    assert [e.original for e in offsets] == ["PAT001"]
    days = int(offsets[0].pseudonym)
    assert -3653 < days <= -365

    a, b = (dcmread(image.path) for image in result.study.images)
    shifted = np.datetime64("2026-11-20") + np.timedelta64(days, "D")
    assert a.StudyDate == str(shifted).replace("-", "")
    assert a.AcquisitionDateTime == str(shifted).replace("-", "") + "101600"
    assert b.StudyDate == str(shifted - np.timedelta64(1, "D")).replace("-", "")
    assert a.StudyTime == "101500"  # whole-day shift: times stay
    assert a.PatientBirthDate == ""  # no option keeps the birth date
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in [c.CodeValue for c in a.DeidentificationMethodCodeSequence]


def test_full_dates_and_patient_characteristics_are_kept_when_asked(tmp_path: Path) -> None:
    options = DeidentificationOptions(
        longitudinal_dates=LongitudinalDates.FULL, retain_patient_characteristics=True
    )
    result = deidentify(_intake(tmp_path, [_rich_instance(seed=1)]), options)
    out = dcmread(result.study.images[0].path)
    assert out.StudyDate == "20261120" and out.SeriesDate == "20261120"
    assert out.PatientAge == "052Y" and out.PatientSex == "F" and out.PatientWeight == 61
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101", "113106", "113108"]
    assert summarize_deidentification(result)["options"] == {
        "longitudinal_dates": "full",
        "retain_patient_characteristics": True,
    }


def test_model_inputs_and_report_redaction(tmp_path: Path) -> None:
    image = ultrasound(patient_id="MRN-42-77")
    image.PatientSex = "M"
    text = (
        "Patient Jane Doe (MRN-42-77, born 1970-01-01, accession ACC123): "
        "nodule 12 mm in the right lobe. DOE^JANE seen on 01.01.1970."
    )
    report = text_report(study_uid=str(image.StudyInstanceUID), text=text, patient_id="MRN-42-77")
    result = deidentify(_intake(tmp_path, [image, report]))
    inputs = result.study.job.inputs
    assert inputs.sex == "M"
    assert inputs.age_years == pytest.approx(56.88, abs=0.01)  # 1970-01-01 to 2026-11-20
    assert inputs.report_text is not None
    for phi in ("Jane", "Doe", "MRN-42-77", "1970-01-01", "01.01.1970", "ACC123"):
        assert phi.casefold() not in inputs.report_text.casefold()
    assert inputs.report_text.count(REDACTED) == 7
    assert "nodule 12 mm in the right lobe" in inputs.report_text
    assert summarize_deidentification(result)["model_inputs"]["report_redactions"] == 7


# --- pixels ------------------------------------------------------------------------------------


def _outside(area: tuple[int, int, int, int], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    x0, y0, x1, y1 = area
    outside = np.ones(shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    return outside


@pytest.mark.parametrize(
    "options",
    [
        PhantomOptions(),
        PhantomOptions(rgb=True),
        PhantomOptions(with_regions=False),
        PhantomOptions(rgb=True, with_regions=False),
    ],
    ids=["grey-regions", "rgb-regions", "grey-detected", "rgb-detected"],
)
@pytest.mark.parametrize("seed", [11, 12])
def test_phantom_phi_never_leaves_the_stage(
    tmp_path: Path, options: PhantomOptions, seed: int
) -> None:
    case = make_case(seed, options)
    datasets = [*case.datasets] + ([case.report_dataset] if case.report_dataset else [])
    result = deidentify(_intake(tmp_path, datasets))

    assert len(result.study.images) == 2
    _assert_absent(list(case.phi), result)
    for image, truth in zip(result.study.images, case.images, strict=True):
        out = dcmread(image.path)
        pixels = out.pixel_array
        assert out.PhotometricInterpretation == ("RGB" if options.rgb else "MONOCHROME2")
        assert not pixels[_outside(truth.image_area, pixels.shape)].any()
        for x0, y0, x1, y1 in truth.text_boxes:
            assert not pixels[y0:y1, x0:x1].any()
        x0, y0, x1, y1 = truth.image_area
        inside = pixels[y0:y1, x0:x1]
        kept = np.count_nonzero(inside == truth.pixels[y0:y1, x0:x1]) / inside.size
        assert kept > (0.99 if options.with_regions else 0.9)
        assert image.has_ultrasound_regions is options.with_regions
    inputs = result.study.job.inputs
    assert inputs.age_years == case.age_years and inputs.sex == case.sex
    assert (inputs.report_text is None) is (case.report_text is None)
    report_text = inputs.report_text or ""
    assert not [phi for phi in case.phi if phi in report_text]


VENDOR_FILES = [
    "US1_J2KR.dcm",  # JPEG 2000, YBR_RCT, no regions
    "US1_UNCR.dcm",  # RGB, no regions
    "gdcm-US-ALOKA-16.dcm",  # 16-bit palette colour, implicit VR, two 2D regions
    "OBXXXX1A_rle.dcm",  # RLE palette colour, private tags
    "OBXXXX1A_2frame.dcm",  # multi-frame palette colour
    "color3d_jpeg_baseline.dcm",  # JPEG baseline YBR_FULL_422 cine, 120 frames
    "color-pl.dcm",  # small RGB without regions
]
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
    "StationName",
    "DeviceSerialNumber",
    "StudyDate",
    "StudyID",
)


@pytest.mark.parametrize("name", VENDOR_FILES)
def test_vendor_files_are_cleaned(tmp_path: Path, vendor_dir: Path, name: str) -> None:
    source = dcmread(vendor_dir / name)
    copy = tmp_path / "src" / name
    copy.parent.mkdir()
    shutil.copyfile(vendor_dir / name, copy)
    ref = InstanceRef.of(source, copy)
    # The scope gate off: these vendor files are not thyroid B-mode, but must be cleaned.
    report = intake(StudyInput(3, str(source.StudyInstanceUID), (ref,), tmp_path / "work"), None)
    assert isinstance(report, IntakeReport)
    result = deidentify(report)

    values = {str(source.get(k, "")).strip() for k in _IDENTIFYING}
    phi = [v for v in values if len(v) >= 3 and v not in ("Anonymized", "NO INFO")]
    phi += [str(source.SOPInstanceUID), str(source.StudyInstanceUID)]
    _assert_absent(phi, result)

    image = result.study.images[0]
    out = dcmread(image.path)
    frames = int(source.get("NumberOfFrames", 1) or 1)
    assert image.frames == frames and (image.rows, image.columns) == (source.Rows, source.Columns)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == "RGB" and out.BitsAllocated == 8
    assert "RedPaletteColorLookupTableData" not in out
    pixels = out.pixel_array.reshape(frames, source.Rows, source.Columns, 3)
    if "SequenceOfUltrasoundRegions" in source:
        area = np.zeros((source.Rows, source.Columns), dtype=bool)
        for region in source.SequenceOfUltrasoundRegions:
            if region.RegionSpatialFormat == 1:
                x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
                area[y0 : region.RegionLocationMaxY1 + 1, x0 : region.RegionLocationMaxX1 + 1] = 1
        assert not pixels[:, ~area].any()
        assert pixels[:, area].any()
    else:
        assert np.count_nonzero(pixels.any(axis=3)) > 0.3 * pixels[..., 0].size
    if name.startswith("US1_"):
        # Site, date and settings are burned in above the image, labels and scale below it.
        assert not pixels[:, :100].any() and not pixels[:, 345:].any()


def test_undecodable_pixels_fail_the_stage(tmp_path: Path) -> None:
    ds = ultrasound()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 this is not a jpeg stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(StageError, match="image 1: pixel data cannot be decoded"):
        deidentify(_intake(tmp_path, [ds]))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_new_errors(tmp_path: Path) -> None:
    case = make_case(5)
    report = _intake(tmp_path, list(case.datasets))
    result = deidentify(report)

    def errors(path: Path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        return {line for line in (run.stdout + run.stderr).splitlines() if "Error" in line}

    for image, source in zip(result.study.images, report.images, strict=True):
        assert errors(image.path) <= errors(source.ref.path)


# --- the pseudonym map -------------------------------------------------------------------------


def _job(database: Database) -> int:
    with database.session() as session:
        patient = Patient(patient_id="PAT001", pseudonym="p-1")
        study = Study(study_instance_uid="1.2.3", patient=patient, calling_ae="US1")
        job = Job(study=study)
        session.add(job)
        session.flush()
        return job.id


def test_pseudonym_map_round_trips_through_the_database(database: Database, tmp_path: Path) -> None:
    job_id = _job(database)
    options = DeidentificationOptions(longitudinal_dates=LongitudinalDates.MODIFIED)
    result = deidentify(_intake(tmp_path, [_rich_instance(seed=1)]), options)
    assert DEIDENTIFY.store is not None
    with database.session() as session:
        study = DEIDENTIFY.store(session, job_id, result)
    assert study is result.study

    with database.session() as session:
        stored = pseudonyms_for_job(session, job_id=job_id)
    assert set(stored) == set(result.pseudonyms)
    assert {e.kind for e in stored} == set(PseudonymKind)

    replacement = [PseudonymEntry(PseudonymKind.PATIENT_ID, "PAT001", "P000000000000001")]
    with database.session() as session:
        assert save_pseudonyms(session, job_id=job_id, entries=replacement + replacement) == 1
    with database.session() as session:
        assert pseudonyms_for_job(session, job_id=job_id) == replacement
        with pytest.raises(ValueError, match="two pseudonyms"):
            save_pseudonyms(
                session,
                job_id=job_id,
                entries=[*replacement, PseudonymEntry(PseudonymKind.PATIENT_ID, "PAT001", "x")],
            )
