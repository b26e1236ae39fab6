"""Hostile data set bytes: what a broken modality or an attacker sends (explicit VR little endian).

Pieces to splice into an otherwise valid data set, for the listener's tests and
its memory benchmark: sequences nested deep or never closed, and a Text Value
that declares more bytes than any data set holds.
"""

from __future__ import annotations

import struct

PIXEL_DATA = b"\xe0\x7f\x10\x00"  # the (7FE0,0010) tag, little endian
_UNDEFINED = struct.pack("<L", 0xFFFFFFFF)

# A Text Value (0040,A160) declared 0x7FFFFFF0 bytes long: it swallows what follows.
OVERLONG_TEXT_VALUE = struct.pack("<HH", 0x0040, 0xA160) + b"UT\0\0" + struct.pack("<L", 0x7FFFFFF0)


def nested_sequences(depth: int, *, closed: bool) -> bytes:
    """Content Sequences of undefined length ``depth`` deep, delimited only if ``closed``."""
    opening = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + _UNDEFINED
    opening += struct.pack("<HH", 0xFFFE, 0xE000) + _UNDEFINED
    closing = struct.pack("<HHLHHL", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    return opening * depth + (closing * depth if closed else b"")


def before_pixels(data: bytes, inserted: bytes) -> bytes:
    """Data set bytes ``data`` with ``inserted`` just before its Pixel Data element."""
    at = data.index(PIXEL_DATA)
    return data[:at] + inserted + data[at:]
