"""Generated hostile variants of a real instance through the listener's checks.

Hypothesis mutates the bytes of a phantom ultrasound file (truncation, flipped
bytes in the header, an inserted element with any VR and length, rewritten
element lengths, a deflated body) and feeds each to what the listener runs
before it acknowledges: :func:`check_limits` and :func:`check_instance`. The
property: either the instance is taken (it parses) or it is refused with a
DIMSE status; no other exception ever escapes, whatever the bytes.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.network.ingest import (
    ReceptionLimits,
    RefusedInstance,
    StoreRequest,
    check_instance,
    check_limits,
)
from dicom_node.network.statuses import StoreStatus
from phantoms import make_case

_CASE = make_case(3).datasets[0]
_BUFFER = io.BytesIO()
_CASE.save_as(_BUFFER, enforce_file_format=True)
VALID = _BUFFER.getvalue()
BODY = VALID.index(b"\x08\x00", 132 + 12)  # the first element after the file meta group
PIXELS = VALID.index(b"\xe0\x7f\x10\x00")
LIMITS = ReceptionLimits(max_instance_bytes=8 << 20, max_inflated_bytes=4 << 20)
VRS = [b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"OB", b"OW", b"PN"]
VRS += [b"SH", b"SQ", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT", b"XX", b"\0\0"]


def _truncated(data: bytes, at: int) -> bytes:
    return data[: BODY + at % (len(data) - BODY)]


def _flipped(data: bytes, offsets: list[int], value: int) -> bytes:
    out = bytearray(data)
    for offset in offsets:
        out[BODY + offset % (PIXELS - BODY)] = value
    return bytes(out)


def _inserted(data: bytes, group: int, vr: bytes, length: int, payload: bytes) -> bytes:
    long_form = vr in (b"OB", b"OW", b"SQ", b"UN", b"UT")
    header = struct.pack("<HH", group | 1, 0x0010) + vr  # a private group, before the pixels
    header += (
        b"\0\0" + struct.pack("<L", length) if long_form else struct.pack("<H", length & 0xFFFF)
    )
    return data[:PIXELS] + header + payload + data[PIXELS:]


def _deflated(data: bytes, extra_zeros: int) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(data[BODY:] + bytes(extra_zeros)) + deflater.flush()
    meta = data[:BODY].replace(b"1.2.840.10008.1.2.1\0", DeflatedExplicitVRLittleEndian.encode())
    return meta + body


MUTATIONS = st.one_of(
    st.builds(_truncated, st.just(VALID), st.integers(0, 10**7)),
    st.builds(
        _flipped,
        st.just(VALID),
        st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
        st.integers(0, 255),
    ),
    st.builds(
        _inserted,
        st.just(VALID),
        st.sampled_from([0x0009, 0x0011, 0x0029, 0x7001]),
        st.sampled_from(VRS),
        st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1), st.just(0xFFFFFFFF)),
        st.binary(max_size=64),
    ),
    st.builds(_deflated, st.just(VALID), st.one_of(st.just(0), st.integers(0, 6 << 20))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=MUTATIONS)
def test_hostile_bytes_are_taken_or_refused_never_raised(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "received.dcm"
        path.write_bytes(data)
        request = StoreRequest(
            path, str(_CASE.SOPClassUID), str(_CASE.SOPInstanceUID), "FUZZ", "127.0.0.1"
        )
        try:
            check_limits(path, LIMITS)
            check_instance(request)
        except RefusedInstance as refusal:
            assert refusal.reason and 0 < refusal.status <= 0xFFFF


def test_the_valid_file_is_taken() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "received.dcm"
        path.write_bytes(VALID)
        check_limits(path, LIMITS)
        header = check_instance(
            StoreRequest(path, str(_CASE.SOPClassUID), str(_CASE.SOPInstanceUID), "F", "::1")
        )
    assert header["SOPInstanceUID"] == _CASE.SOPInstanceUID


@pytest.mark.parametrize(
    ("tag", "vr", "keyword"),
    [(b"\x08\x00\x16\x00", b"UI", "SOPClassUID"), (b"\x10\x00\x20\x00", b"LO", "PatientID")],
)
def test_a_value_with_a_corrupt_vr_is_refused_before_it_is_stored(
    tag: bytes, vr: bytes, keyword: str
) -> None:
    """Hypothesis found SOP Class UID's VR flipped from UI to AI escaping as NotImplementedError."""
    at = VALID.index(tag + vr, BODY)
    data = VALID[: at + 4] + b"AI" + VALID[at + 6 :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "received.dcm"
        path.write_bytes(data)
        check_limits(path, LIMITS)
        request = StoreRequest(path, str(_CASE.SOPClassUID), str(_CASE.SOPInstanceUID), "F", "::1")
        with pytest.raises(RefusedInstance) as refused:
            check_instance(request)
    assert refused.value.status == StoreStatus.CANNOT_UNDERSTAND
    assert refused.value.reason == f"{keyword} cannot be read (NotImplementedError)"
