import warnings
from pathlib import Path

import pytest

import dicom_factory
from imaging.dicom_files import (
    UnreadableDicomError,
    keep_header_values_out_of_logs,
    read_header,
)

VENDOR_FILES = [
    "US1_J2KR.dcm",
    "US1_UNCR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "OBXXXX1A_rle.dcm",
    "color3d_jpeg_baseline.dcm",
]


@pytest.mark.parametrize("name", VENDOR_FILES)
def test_vendor_files_are_whole(vendor_dir: Path, name: str) -> None:
    header = read_header(vendor_dir / name)
    assert header.dataset.Modality == "US"
    assert header.pixel_data is not None
    assert "PixelData" not in header.dataset  # pixels were not read


@pytest.mark.parametrize("name", VENDOR_FILES)
def test_truncated_pixel_data_is_detected(vendor_dir: Path, tmp_path: Path, name: str) -> None:
    data = (vendor_dir / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) - 2000])
    with pytest.raises(UnreadableDicomError, match=r"cut short|ends"):
        read_header(cut)


def test_garbage_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 50 + b"not dicom")
    with pytest.raises(UnreadableDicomError, match="header"):
        read_header(path)


def test_known_short_jpeg2000_stream(vendor_dir: Path) -> None:
    with pytest.raises(UnreadableDicomError):
        read_header(vendor_dir / "emri_small_jpeg_2k_lossless_too_short.dcm")


def test_header_values_stay_out_of_warnings(tmp_path: Path) -> None:
    path = dicom_factory.write(dicom_factory.ultrasound(), tmp_path / "x.dcm")
    keep_header_values_out_of_logs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = read_header(path).dataset
        dataset.BodyPartExamined = "ABDOM/RAD"  # invalid CS, as a vendor wrote it
        dataset.PatientName = "DOE^JANE" * 10  # too long for PN: would be quoted
        assert dataset.BodyPartExamined == "ABDOM/RAD"
