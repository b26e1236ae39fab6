"""A hostile-input corpus against a live ``llnm-node serve``: every kind gets its documented
status, the node keeps answering, refusals are recorded, acknowledged instances are kept
byte for byte, and no header value of a hostile file reaches the log.

The corpus covers what an attacker or a broken modality sends: bodies that are random,
truncated or lie about lengths, impossible image geometry, broken compressed streams,
UIDs that disagree with the request or try to leave the spool, byte-order lies,
nested or unclosed sequences, oversized private data, decompression bombs, resends
with other bytes, malformed dates, numbers and character sets. "taken" kinds are
acknowledged (their problem is the job's to report: it fails with a notice); the
others are refused at reception with the status the README's table gives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from test_serve_dcmtk import (
    NODE_AE,
    TEST_AE,
    ServeProcess,
    _echo_status,
    _part10_with_dataset_bytes,
    dataset_bytes,
    raw_store,
)

import dicom_factory
from phantoms.hostile import OVERLONG_TEXT_VALUE, before_pixels, nested_sequences

TAKEN = 0x0000
CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
NO_ANSWER = None  # the presentation context is rejected: no C-STORE is ever sent

Build = Callable[[Path, str], Path]  # (folder, SOP Instance UID) -> Part 10 file


def _us(uid: str, kind: str) -> Dataset:
    ds = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80)
    ds.PatientName = f"Fuzz^{kind}"  # a value the log must never show
    return ds


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    value += b" " * (len(value) % 2)
    ds[Tag(keyword)] = RawDataElement(Tag(keyword), vr, len(value), value, 0, False, True)


def _write(folder: Path, ds: Dataset, name: str) -> Path:
    return dicom_factory.write(ds, folder / f"{name}.dcm")


def _with_body(folder: Path, uid: str, name: str, body: Callable[[bytes], bytes]) -> Path:
    valid = _write(folder, _us(uid, name), f"{name}-valid")
    return _part10_with_dataset_bytes(folder / f"{name}.dcm", uid, body(dataset_bytes(valid)))


def _geometry(**values: object) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "geometry")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return _write(folder, ds, f"geometry-{uid[-6:]}")

    return build


def _compressed(syntax: str, fragments: list[bytes]) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "compressed")
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return _write(folder, ds, f"compressed-{uid[-6:]}")

    return build


def _header(keyword: str, vr: str, value: bytes) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, keyword)
        _raw(ds, keyword, vr, value)
        return _write(folder, ds, f"header-{keyword}")

    return build


def _mismatch(**values: str | None) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "mismatch")
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return _write(folder, ds, f"mismatch-{uid[-6:]}")

    return build


def _deflated(pixel_bytes: int, corrupt: bool = False) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "deflate")
        if pixel_bytes:
            ds.PixelData = bytes(pixel_bytes)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        path = _write(folder, ds, f"deflate-{uid[-6:]}")
        if corrupt:
            data = bytearray(path.read_bytes())
            body = len(data) - len(dataset_bytes(path))
            data[body + 40 : body + 240] = bytes(range(200))
            path.write_bytes(bytes(data))
        return path

    return build


def _instance_mismatch(folder: Path, uid: str) -> Path:
    """The data set's SOP Instance UID differs (same length) from the file meta's."""
    path = _write(folder, _us(uid, "instance"), "instance")
    data = path.read_bytes()
    body = len(data) - len(dataset_bytes(path))
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    path.write_bytes(data[:body] + data[body:].replace(uid.encode(), other.encode()))
    return path


def _fragments(items: bytes) -> Build:
    """JPEG Baseline whose encapsulated Pixel Data holds ``items`` after an empty offset table."""

    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "fragments")
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + items
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return _write(folder, ds, f"fragments-{uid[-6:]}")

    return build


def _class_mismatch(folder: Path, uid: str) -> Path:
    """The data set says US Multi-frame, the file meta (and so the request) US Image."""
    path = _write(folder, _us(uid, "class"), "class")
    data = path.read_bytes()
    body = len(data) - len(dataset_bytes(path))
    single, multi = b"1.2.840.10008.5.1.4.1.1.6.1", b"1.2.840.10008.5.1.4.1.1.3.1"
    path.write_bytes(data[:body] + data[body:].replace(single, multi))
    return path


def _unknown_syntax(folder: Path, uid: str) -> Path:
    """File meta naming transfer syntax 1.2.840.10008.1.2.9, which does not exist."""
    path = _write(folder, _us(uid, "syntax"), "syntax")
    data = bytearray(path.read_bytes())
    at = data.index(b"1.2.840.10008.1.2.1\0")
    data[at : at + 20] = b"1.2.840.10008.1.2.9\0"
    path.write_bytes(bytes(data))
    return path


def _private(size: int) -> Build:
    def build(folder: Path, uid: str) -> Path:
        ds = _us(uid, "private")
        ds.add_new(0x00090010, "LO", "FUZZ")
        ds.add_new(0x00091000, "OB", bytes(size))
        return _write(folder, ds, f"private-{size}")

    return build


def _byte_order_lie(folder: Path, uid: str) -> Path:
    path = _write(folder, _us(uid, "endian"), "endian")
    data = bytearray(path.read_bytes())
    at = data.index(b"1.2.840.10008.1.2.1\0")
    data[at : at + 20] = b"1.2.840.10008.1.2.2\0"  # explicit big endian, bytes still little
    path.write_bytes(bytes(data))
    return path


CORPUS: dict[str, tuple[Build, set[int | None]]] = {
    "random_body": (
        lambda f, u: _part10_with_dataset_bytes(
            f / "random.dcm", u, np.random.default_rng(1).bytes(4096)
        ),
        {CANNOT_UNDERSTAND},
    ),
    "empty_body": (
        lambda f, u: _part10_with_dataset_bytes(f / "empty.dcm", u, b""),
        {CANNOT_UNDERSTAND},
    ),
    "truncated_header": (
        lambda f, u: _with_body(f, u, "cut-header", lambda d: d[:100]),
        {CANNOT_UNDERSTAND},
    ),
    "truncated_pixels": (
        lambda f, u: _with_body(f, u, "cut-pixels", lambda d: d[:-500]),
        {CANNOT_UNDERSTAND},
    ),
    "length_past_end": (
        lambda f, u: _with_body(
            f,
            u,
            "past-end",
            lambda d: before_pixels(d, OVERLONG_TEXT_VALUE),
        ),
        {CANNOT_UNDERSTAND},
    ),
    "nested_3000": (
        lambda f, u: _with_body(
            f, u, "nested", lambda d: before_pixels(d, nested_sequences(3000, closed=True))
        ),
        {CANNOT_UNDERSTAND},
    ),
    "nested_70": (
        lambda f, u: _with_body(
            f, u, "nested70", lambda d: before_pixels(d, nested_sequences(70, closed=True))
        ),
        {CANNOT_UNDERSTAND},
    ),
    "never_closed": (
        lambda f, u: _with_body(
            f, u, "open", lambda d: before_pixels(d, nested_sequences(4, closed=False))
        ),
        {CANNOT_UNDERSTAND},
    ),
    "odd_length_value": (_header("InstitutionName", "LO", b"ODD"), {TAKEN}),
    "rows_zero": (_geometry(Rows=0), {TAKEN}),
    "rows_columns_huge": (_geometry(Rows=65535, Columns=65535), {TAKEN}),
    "frames_huge": (_geometry(NumberOfFrames=2**31 - 1), {TAKEN}),
    "frames_not_a_number": (_header("NumberOfFrames", "IS", b"abc"), {TAKEN}),
    "bits_allocated_7": (_geometry(BitsAllocated=7, BitsStored=7, HighBit=6), {TAKEN}),
    "rgb_without_rgb_data": (
        _geometry(PhotometricInterpretation="RGB", SamplesPerPixel=3, PlanarConfiguration=0),
        {TAKEN},
    ),
    "palette_without_table": (_geometry(PhotometricInterpretation="PALETTE COLOR"), {TAKEN}),
    "no_pixel_data": (_mismatch(PixelData=None), {TAKEN}),
    "corrupt_jpeg": (
        _compressed(JPEGBaseline8Bit, [b"\xff\xd8" + bytes(200) + b"\xff\xd9"]),
        {TAKEN},
    ),
    "corrupt_rle": (_compressed(RLELossless, [struct.pack("<L", 9) + bytes(70)]), {TAKEN}),
    "corrupt_jpeg2000": (
        _compressed(JPEG2000Lossless, [b"\xff\x4f\xff\x51" + bytes(100)]),
        {TAKEN},
    ),
    "tiny_fragment": (_compressed(JPEGBaseline8Bit, [b"\xff\xd8"]), {TAKEN}),
    "empty_fragment": (_fragments(struct.pack("<HHL", 0xFFFE, 0xE000, 0)), {TAKEN}),
    "huge_fragment": (
        _fragments(struct.pack("<HHL", 0xFFFE, 0xE000, 0x7FFFFFF0) + bytes(100)),
        {TAKEN, CANNOT_UNDERSTAND},
    ),
    "sop_class_mismatch": (_class_mismatch, {MISMATCH}),
    "unknown_transfer_syntax": (_unknown_syntax, {NO_ANSWER}),
    "sop_instance_mismatch": (_instance_mismatch, {MISMATCH}),
    "study_uid_missing": (_mismatch(StudyInstanceUID=None), {MISMATCH}),
    "series_uid_missing": (_mismatch(SeriesInstanceUID=None), {MISMATCH}),
    "study_uid_leaves_spool": (_mismatch(StudyInstanceUID="../../../../etc/passwd"), {TAKEN}),
    "study_uid_with_nul": (_header("StudyInstanceUID", "UI", b"1.2.3\x00../x"), {TAKEN}),
    "byte_order_lie": (_byte_order_lie, {CANNOT_UNDERSTAND, MISMATCH}),
    "huge_private_element": (_private(40 << 20), {TAKEN}),
    "malformed_dates": (_header("PatientBirthDate", "DA", b"Fuzz-1992-03-25"), {TAKEN}),
    "malformed_time": (_header("StudyTime", "TM", b"Fuzz<script>"), {TAKEN}),
    "malformed_number": (_header("PatientWeight", "DS", b"Fuzz-heavy"), {TAKEN}),
    "malformed_age": (_header("PatientAge", "AS", b"Fuzz-forty"), {TAKEN}),
    "unknown_character_set": (_header("SpecificCharacterSet", "CS", b"ISO 2022 IR 999"), {TAKEN}),
    "control_characters_in_name": (_header("PatientName", "PN", b"Fuzz\x01\x02^Name"), {TAKEN}),
    "deflate_bomb": (_deflated(96 << 20), {OUT_OF_RESOURCES}),
    "corrupt_deflate": (_deflated(0, corrupt=True), {CANNOT_UNDERSTAND}),
    "ct_image": (
        lambda f, u: dicom_factory.write(dicom_factory.ct(sop_uid=u), f / "ct.dcm"),
        {NOT_SUPPORTED},
    ),
    "secondary_capture_of_ct": (
        lambda f, u: _write(
            f,
            dicom_factory.ultrasound(
                sop_uid=u, sop_class=SecondaryCaptureImageStorage, modality="CT"
            ),
            "sc-ct",
        ),
        {NOT_SUPPORTED},
    ),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One serve process (no job ever starts: only reception is under test)."""
    served = ServeProcess(tmp_path_factory.mktemp("fuzz"), allowed_callers=(TEST_AE,))
    try:
        served.start()
        served.wait_ready()
        yield served
    finally:
        served.close()


def _offer(node: ServeProcess, path: Path) -> int | None:
    """Propose the file's transfer syntax (and Verification); the C-STORE status, or None
    when the node turns the syntax down and nothing can be sent."""
    meta = read_file_meta_info(path)
    ae = AE(ae_title=TEST_AE)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        response = assoc.send_c_store(path)
        return int(response.Status) if "Status" in response else None
    except ValueError:  # no accepted presentation context for it
        return None
    finally:
        assoc.release()


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_hostile_kind_gets_its_status_and_the_node_stays_up(
    node: ServeProcess, tmp_path: Path, kind: str
) -> None:
    build, expected = CORPUS[kind]
    uid = generate_uid()
    path = build(tmp_path, uid)
    ((events_before,),) = node.rows("SELECT count(*) FROM events")
    (status,) = raw_store(node.port, [path]) if NO_ANSWER not in expected else [_offer(node, path)]
    assert status in expected, f"{kind}: 0x{status or 0:04X}, expected {sorted(expected, key=str)}"
    assert _echo_status(node.port) == 0x0000 and node.is_running()
    rows = node.rows("SELECT path FROM instances WHERE sop_instance_uid = :u", u=uid)
    ((events_after,),) = node.rows("SELECT count(*) FROM events")
    if status is NO_ANSWER:  # turned down in association negotiation: nothing to record
        assert rows == []
        return
    assert events_after > events_before  # stored (job created or joined) or refused
    if status == TAKEN:
        ((relative,),) = rows  # acknowledged: in the database and on disk, byte for byte
        assert (node.spool / relative).read_bytes()[-64:] == path.read_bytes()[-64:]
        assert str(node.spool / relative).startswith(str(node.spool))
    else:
        assert rows == []
        refusals = [
            e for e in node.events("instance.refused") if e.detail["sop_instance_uid"] == uid
        ]
        assert len(refusals) == 1 and refusals[0].detail["status"] == status


def test_a_resend_with_other_bytes_keeps_the_first_and_warns(
    node: ServeProcess, tmp_path: Path
) -> None:
    uid = generate_uid()
    first = _write(tmp_path, _us(uid, "first"), "first")
    second = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80, seed=9)
    second.StudyInstanceUID = _us(uid, "x").StudyInstanceUID
    assert raw_store(node.port, [first]) == [TAKEN]
    assert raw_store(node.port, [_write(tmp_path, second, "second")]) == [TAKEN]
    ((relative,),) = node.rows("SELECT path FROM instances WHERE sop_instance_uid = :u", u=uid)
    assert (node.spool / relative).read_bytes().endswith(dataset_bytes(first))
    assert len(node.events("instance.duplicate_differs")) >= 1


def test_no_hostile_header_value_reaches_the_log(node: ServeProcess) -> None:
    log = node.log()
    assert "Traceback" not in log
    for value in ("Fuzz^", "Fuzz-1992", "Fuzz<script>", "Fuzz-heavy", "Fuzz-forty", "etc/passwd"):
        assert value not in log, value
