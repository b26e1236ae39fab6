"""Header values normalised against their VR (imaging.header_values), error text redaction
(imaging.redaction) and which stage errors are retried (pipeline.runner.is_transient)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from sqlalchemy.exc import OperationalError

from imaging.dicom_files import read_dataset, read_header
from imaging.header_values import normalise_header, pixel_module_problem, valid_da
from imaging.redaction import Redactor, identifying_values, study_redactor
from models.bundle import BundleError
from phantoms import make_case
from pipeline.runner import is_transient


def _raw(dataset: Dataset, keyword: str, vr: str, value: str) -> None:
    data = value.encode("utf-8")
    data += b" " * (len(data) % 2)
    dataset[Tag(keyword)] = RawDataElement(Tag(keyword), vr, len(data), data, 0, False, True)


def _saved(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("vr", "good", "bad"),
    [
        ("DA", ["20240229", ""], ["1992-03-25", "20230229", "2024013", "Grace-66894204"]),
        ("TM", ["0930", "235959.123456", "07"], ["<script>", "24:00", "12:30:00", "9"]),
        ("DT", ["2024", "20240229093000.5+0100"], ["2024-02-29", "20241301"]),
        ("AS", ["045Y", "003M"], ["45Y", "forty"]),
        ("IS", ["12", "-3"], ["abc", "1.5", "99999999999"]),
        ("DS", ["0.25", "-1e3", "7"], ["x1", "1.2.3", "12345678901234567"]),
        ("PN", ["Doe^Jane", "Yamada^Tarou=山田^太郎"], ["Doe\x01Jane", "a^b^c^d^e^f"]),
    ],
)
def test_a_value_that_breaks_its_vr_is_dropped_and_named(
    tmp_path: Path, vr: str, good: list[str], bad: list[str]
) -> None:
    keyword = {
        "DA": "StudyDate",
        "TM": "StudyTime",
        "DT": "AcquisitionDateTime",
        "AS": "PatientAge",
        "IS": "SeriesNumber",
        "DS": "PatientWeight",
        "PN": "ReferringPhysicianName",
    }[vr]
    for value in good:
        dataset = make_case(1).datasets[0]
        _raw(dataset, keyword, vr, value)
        dataset.SpecificCharacterSet = "ISO_IR 192"
        header = read_header(_saved(dataset, tmp_path / "good.dcm"))
        assert keyword not in header.repaired, value
    for value in bad:
        dataset = make_case(1).datasets[0]
        _raw(dataset, keyword, vr, value)
        header = read_header(_saved(dataset, tmp_path / "bad.dcm"))
        assert keyword in header.repaired, value
        assert header.dataset.get(keyword) in ("", None)
        assert value not in " ".join(header.repaired)


def test_the_listener_normalises_only_what_it_reads(tmp_path: Path) -> None:
    dataset = make_case(1).datasets[0]
    _raw(dataset, "StudyDate", "DA", "2023-02-29")
    _raw(dataset, "ContentDate", "DA", "2023-02-29")
    dataset.SpecificCharacterSet = "NOT A CHARSET"
    path = _saved(dataset, tmp_path / "i.dcm")
    header = read_header(path, normalised=("StudyDate", "PatientID", "NoSuchKeyword"))
    assert header.repaired == ("SpecificCharacterSet", "StudyDate")
    assert header.dataset.StudyDate == ""
    assert header.dataset.ContentDate == "2023-02-29"  # intake, reading it whole, repairs it
    assert header.dataset.PatientID == dataset.PatientID
    assert "ContentDate" in read_header(path).repaired


def test_multi_values_keep_what_is_valid_and_sequences_are_walked() -> None:
    dataset = Dataset()
    dataset.OtherPatientIDsSequence = Sequence([Dataset()])
    item = dataset.OtherPatientIDsSequence[0]
    _raw(item, "PatientBirthDate", "DA", "19920325")
    _raw(dataset, "ImageType", "CS", "ORIGINAL\\PRIMARY")
    _raw(dataset, "PixelSpacing", "DS", "0.1\\wide")
    assert normalise_header(dataset) == ("PixelSpacing",)
    assert float(dataset.PixelSpacing) == pytest.approx(0.1)
    _raw(item, "PatientBirthDate", "DA", "1992-03-25")
    assert normalise_header(dataset) == ("PatientBirthDate",)
    assert item.PatientBirthDate == ""


def test_an_unknown_character_set_becomes_latin_1(tmp_path: Path) -> None:
    dataset = make_case(1).datasets[0]
    _raw(dataset, "SpecificCharacterSet", "CS", "ISO 2022 IR 999")
    dataset["PatientName"] = RawDataElement(
        Tag("PatientName"), "PN", 12, "Müller^Hans ".encode("latin-1"), 0, False, True
    )
    path = _saved(dataset, tmp_path / "charset.dcm")
    header = read_header(path)
    assert header.repaired == ("SpecificCharacterSet",)
    assert header.dataset.SpecificCharacterSet == "ISO_IR 100"
    assert str(header.dataset.PatientName) == "Müller^Hans"
    assert str(read_dataset(path).PatientName) == "Müller^Hans"  # every later reader agrees


def test_pixel_module_numbers_are_checked_not_repaired() -> None:
    dataset = make_case(1).datasets[0]
    assert pixel_module_problem(dataset) is None
    _raw(dataset, "NumberOfFrames", "IS", "abc")
    normalise_header(dataset)
    assert "NumberOfFrames" in (pixel_module_problem(dataset) or "")
    assert valid_da("20240229") and not valid_da("20230229")


def test_the_redactor_knows_the_studys_identifying_values(tmp_path: Path) -> None:
    dataset = make_case(1).datasets[0]
    dataset.PatientName = "Quist^Zoe"
    dataset.InstitutionName = "St Elsewhere Hospital"
    _raw(dataset, "PatientBirthDate", "DA", "1992-03-25")
    dataset.add_new(0x00091010, "LO", "vendor secret 42")
    dataset.PatientSex = "F"
    values = identifying_values(dataset)
    assert values["1992-03-25"] == "PatientBirthDate" and values["Quist"] == "PatientName"
    assert "vendor secret 42" in values and "F" not in values  # one character: left alone
    assert str(dataset.SOPInstanceUID) not in values  # a UID names the study to the admin
    redact = study_redactor([_saved(dataset, tmp_path / "a.dcm"), tmp_path / "missing.dcm"])
    message = "ValueError: Unable to convert '1992-03-25' to 'DA' for Quist^Zoe at St Elsewhere"
    scrubbed = redact(message)
    assert "1992" not in scrubbed and "Quist" not in scrubbed and "Zoe" not in scrubbed
    assert "<PatientBirthDate>" in scrubbed and "'DA'" in scrubbed
    assert Redactor((("Li", "PatientName"),))("Link to Li.") == "Link to <PatientName>."


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError("disk"), True),
        (TimeoutError(), True),
        (MemoryError(), True),
        (OperationalError("select", {}, Exception("gone")), True),
        (BundleError("being replaced"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate"), True),
        (ValueError("Unable to convert"), False),
        (KeyError("NumberOfFrames"), False),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_only_errors_that_can_pass_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
