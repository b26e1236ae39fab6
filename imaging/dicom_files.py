"""Reading DICOM files without loading their pixels, and checking they are whole."""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, config, dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging.header_values import normalise_elements, normalise_header

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Deeper sequence nesting is refused; real SR content trees stay far below it.
MAX_SEQUENCE_DEPTH = 64
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
_LONG_LENGTH_VRS |= {b"UT", b"UV"}


class UnreadableDicomError(ValueError):
    """The bytes are not a DICOM file this node can use; the message says why."""


@dataclass(frozen=True)
class PixelDataExtent:
    """Where the Pixel Data element sits in a file."""

    offset: int  # of the element's tag
    encapsulated: bool
    length: int | None  # value length; None when encapsulated (undefined length)


@dataclass(frozen=True)
class FileHeader:
    """A file's attributes up to (not including) the pixels, and its pixel extent."""

    dataset: Dataset  # its values normalised (imaging.header_values)
    transfer_syntax_uid: UID
    pixel_data: PixelDataExtent | None
    repaired: tuple[str, ...] = ()  # keywords of the values normalisation dropped


def _read_pixel_extent(
    raw: bytes, *, offset: int, implicit: bool, little: bool
) -> tuple[tuple[int, int], int, int]:
    """Decode an element header: ((group, element), value length, header size)."""
    endian = "<" if little else ">"
    if len(raw) < 8:
        raise UnreadableDicomError(f"element header at byte {offset} is cut short")
    group, element = struct.unpack(f"{endian}HH", raw[:4])
    if implicit:
        (length,) = struct.unpack(f"{endian}L", raw[4:8])
        return (group, element), length, 8
    vr = raw[4:6]
    if vr in _LONG_LENGTH_VRS:
        if len(raw) < 12:
            raise UnreadableDicomError(f"element header at byte {offset} is cut short")
        (length,) = struct.unpack(f"{endian}L", raw[8:12])
        return (group, element), length, 12
    (short_length,) = struct.unpack(f"{endian}H", raw[6:8])
    return (group, element), short_length, 8


def keep_header_values_out_of_logs() -> None:
    """Stop pydicom from quoting header values (possibly identifying) in warnings and logs.

    pydicom validates values as they are read and set and warns with the offending
    value, e.g. a patient name or an institution; the node reads and de-identifies
    files from many vendors and must not copy their PHI into its logs. Values are
    still kept exactly as the vendor wrote them. pydicom's remaining warnings (e.g.
    "Unknown encoding '<the sender's value>'") are silenced too: the node records
    what it repaired itself, by attribute keyword (:mod:`imaging.header_values`).
    Process-wide, as pydicom's config is. highdicom, which builds the result objects
    from the original images, logs their UIDs at INFO; its logger is set to WARNING.
    """
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("highdicom").setLevel(logging.WARNING)


def _sequence_depth(dataset: Dataset) -> int:
    """How deep ``dataset``'s sequences nest (0: none), walked without recursion."""
    deepest = 0
    stack = [(dataset, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for element in current.values():
            if getattr(element, "VR", None) == "SQ" and isinstance(element.value, Sequence):
                stack.extend((item, depth + 1) for item in element.value)
    return deepest


def _cut_short(dataset: Dataset) -> str | None:
    """The first element whose value is shorter than its declared length (the file ended)."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != _UNDEFINED_LENGTH
            and isinstance(raw.value, bytes)
            and len(raw.value) < raw.length
        ):
            return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
    return None


def inflated_size_over(path: Path, limit: int, chunk: int = 1 << 16) -> int | None:
    """How large a deflated file's data set inflates, if over ``limit`` bytes; else None.

    Only for Deflated Explicit VR Little Endian; the size is counted up to the
    first chunk past ``limit``. The stream is inflated a chunk at a time and
    thrown away, so memory stays at ``chunk`` bytes whatever the stream claims.
    Other transfer syntaxes give None.

    Raises
    ------
    UnreadableDicomError
        If the file meta cannot be read or the deflated stream is corrupt.
    """
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        raise UnreadableDicomError(f"file meta cannot be read ({type(exc).__name__})") from exc
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    with path.open("rb") as fp:
        # preamble, "DICM", the group length element (explicit VR UL: 12 bytes), the group
        fp.seek(128 + 4 + 12 + int(meta.get("FileMetaInformationGroupLength", 0)))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while block := fp.read(chunk):
                total += len(inflater.decompress(block, chunk))
                while inflater.unconsumed_tail and total <= limit:
                    total += len(inflater.decompress(inflater.unconsumed_tail, chunk))
                if total > limit:
                    return total
        except zlib.error as exc:
            raise UnreadableDicomError("the deflated data set is corrupt") from exc
    return None


def read_dataset(path: Path, *, pixels: bool = False) -> Dataset:
    """An instance, with its pixels only if ``pixels``, its values normalised.

    Raises
    ------
    OSError, pydicom.errors.InvalidDicomError, ValueError
        If ``path`` cannot be read.
    """
    dataset = dcmread(path, stop_before_pixels=not pixels)
    normalise_header(dataset)
    return dataset


def read_header(path: Path, *, normalised: Collection[str] | None = None) -> FileHeader:
    """Read everything before the pixels and check the pixel element is complete.

    Only the header is decoded; pixel bytes are never read into memory except
    for the last eight bytes of an encapsulated stream, whose sequence
    delimiter proves the stream arrived whole. Every value is normalised, or
    only the top-level elements of the ``normalised`` keywords (the listener's
    hot path; intake reads the header again, whole).

    Raises
    ------
    UnreadableDicomError
        If the file is not DICOM Part 10, its header cannot be parsed, or the
        Pixel Data element is cut short.
    """
    size = path.stat().st_size
    with path.open("rb") as fp:
        try:
            dataset = dcmread(fp, stop_before_pixels=True)
            short = _cut_short(dataset)
            if short is not None:
                raise UnreadableDicomError(f"{short} runs past the end of the data set")
            repaired = (
                normalise_header(dataset)
                if normalised is None
                else normalise_elements(dataset, normalised)
            )
        except RecursionError as exc:
            raise UnreadableDicomError("sequences nested too deep to read") from exc
        except UnreadableDicomError:
            raise
        except Exception as exc:  # boundary: bytes from the network may break pydicom anyhow
            # (OSError for a tag it cannot read, NotImplementedError for an unknown VR, ...)
            raise UnreadableDicomError(f"header cannot be parsed ({type(exc).__name__})") from exc
        if _sequence_depth(dataset) > MAX_SEQUENCE_DEPTH:
            raise UnreadableDicomError(f"sequences nested more than {MAX_SEQUENCE_DEPTH} deep")
        meta = dataset.file_meta
        ts = UID(meta.get("TransferSyntaxUID", ""))
        if not ts:
            raise UnreadableDicomError("file meta has no Transfer Syntax UID")
        if ts == DeflatedExplicitVRLittleEndian:
            # The deflated stream was inflated completely to parse it; nothing left to check.
            return FileHeader(dataset, ts, None, repaired)
        offset = fp.tell()
        head = fp.read(12)
    if not head:
        return FileHeader(dataset, ts, None, repaired)
    implicit = ts == ImplicitVRLittleEndian
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    tag, length, header_size = _read_pixel_extent(
        head, offset=offset, implicit=implicit, little=little
    )
    if tag != PIXEL_DATA_TAG:
        return FileHeader(dataset, ts, None, repaired)
    if length == _UNDEFINED_LENGTH:
        with path.open("rb") as fp:
            fp.seek(max(size - 8, 0))
            tail = fp.read(8)
        delimiter = struct.pack("<HHL" if little else ">HHL", 0xFFFE, 0xE0DD, 0)
        if tail != delimiter:
            raise UnreadableDicomError(
                "encapsulated Pixel Data has no sequence delimiter: the stream is cut short"
            )
        extent = PixelDataExtent(offset=offset, encapsulated=True, length=None)
    else:
        end = offset + header_size + length
        if end > size:
            raise UnreadableDicomError(
                f"Pixel Data declares {length} bytes but the file ends {end - size} bytes early"
            )
        extent = PixelDataExtent(offset=offset, encapsulated=False, length=length)
    return FileHeader(dataset, ts, extent, repaired)
