"""Pixel decoding: any accepted transfer syntax and photometric interpretation to 8-bit frames.

Rules
-----
Transfer syntaxes
    pydicom's pixel decoders: native (implicit/explicit little, explicit big
    endian, deflated) by pydicom itself; RLE by pydicom or pylibjpeg-rle;
    JPEG baseline/extended by pylibjpeg-libjpeg or Pillow; JPEG lossless by
    pylibjpeg-libjpeg; JPEG-LS by pyjpegls; JPEG 2000 and HTJ2K by
    pylibjpeg-openjpeg (or Pillow). A syntax without an installed plugin is a
    :class:`~imaging.errors.StageError`.
Colour
    ``PALETTE COLOR`` goes through its (possibly segmented) lookup table to RGB;
    ``YBR_FULL``, ``YBR_FULL_422``, ``YBR_ICT`` and ``YBR_RCT`` become RGB in
    the decoder; ``RGB`` is kept; ``MONOCHROME1`` is inverted so that high
    values are bright, as in ``MONOCHROME2``.
Bit depth
    Stored values with more than 8 bits are scaled linearly from the full range
    of Bits Stored (signed data shifted to unsigned first) to 0-255, rounding to
    nearest: the rule keeps relative brightness and does not depend on the
    image content. A 16-bit palette's entries are scaled the same way from
    0-65535, except when no entry exceeds 255: some writers put 8-bit values in
    16-bit tables, and those entries are used as they are.
Frames
    One frame per image goes on (:data:`FrameRule`): ``"middle"`` (default,
    frame ``n // 2``, the only one decoded) or ``"most_content"`` (every frame
    is decoded in turn; the one with the most pixels brighter than
    :data:`CONTENT_LEVEL` wins, the earliest on ties).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import iter_pixels, pixel_array
from pydicom.uid import UID

from imaging.errors import StageError

FrameRule = Literal["middle", "most_content"]

# A pixel counts as image content ("most_content" rule) above this 8-bit grey level.
CONTENT_LEVEL = 10

_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_PALETTE = "PALETTE COLOR"
# What pydicom's decoder plugins raise on damaged or inconsistent pixel data.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, struct.error, zlib.error, OSError)

Image8 = NDArray[np.uint8]


@dataclass(frozen=True)
class DecodedFrame:
    """One 8-bit frame: ``pixels`` is (H, W) grey or (H, W, 3) RGB; ``index`` counts from 0."""

    index: int
    pixels: Image8


def frame_count(ds: Dataset) -> int:
    """Number of frames in the data set (1 when Number of Frames is absent)."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    return UID(meta.get("TransferSyntaxUID", "") if meta is not None else "")


def _check_decodable(ds: Dataset) -> None:
    """Raise a :class:`StageError` for pixel data no decoder here can turn into an image."""
    if "PixelData" not in ds:
        present = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        kind = f"only {present[0]}" if present else "no Pixel Data"
        raise StageError(f"the image has {kind}; nothing to decode")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise StageError(f"the image declares a zero size ({rows} rows x {columns} columns)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _MONOCHROME | _COLOUR | {_PALETTE}:
        raise StageError(
            f"photometric interpretation {photometric or '(missing)'} is not supported"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != (3 if photometric in _COLOUR else 1):
        raise StageError(f"{samples} sample(s) per pixel do not fit photometric {photometric}")
    syntax = _transfer_syntax(ds)
    if not syntax:
        raise StageError("the data set has no Transfer Syntax UID in its file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise StageError(f"no pixel decoder for transfer syntax {syntax.name}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise StageError(f"no installed plugin decodes {syntax.name} ({missing})")
    frames = frame_count(ds)
    if frames < 1:
        raise StageError(f"the image declares {frames} frames")


def _scale(values: NDArray[np.generic], bits: int) -> Image8:
    """Map 0 .. 2**bits - 1 linearly onto 0 .. 255, rounding to nearest."""
    factor = 255.0 / float((1 << bits) - 1)
    scaled = np.rint(values.astype(np.float64) * factor)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _to_display(raw: NDArray[np.generic], ds: Dataset) -> Image8:
    """One decoded frame as 8-bit grey or RGB, by the module's rules."""
    expected = (int(ds.Rows), int(ds.Columns))
    if raw.shape[:2] != expected or raw.ndim not in (2, 3):
        raise StageError(f"decoded frame has shape {raw.shape}, expected {expected}")
    photometric = str(ds.PhotometricInterpretation).strip()
    if photometric == _PALETTE:
        try:
            rgb = apply_color_lut(raw, ds)
        except (ValueError, KeyError, IndexError) as exc:
            raise StageError(f"the palette colour lookup table cannot be applied: {exc}") from exc
        if rgb.dtype == np.uint8 or int(rgb.max(initial=0)) <= 255:
            return rgb.astype(np.uint8)
        return _scale(rgb, 16)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    values: NDArray[np.generic] = raw
    if int(ds.get("PixelRepresentation", 0)) == 1:
        values = raw.astype(np.int64) + (1 << (bits - 1))
    if bits > 8 or values.dtype != np.uint8:
        values = _scale(values, bits) if bits > 8 else np.clip(values, 0, 255).astype(np.uint8)
    out = np.ascontiguousarray(values, dtype=np.uint8)
    if photometric == "MONOCHROME1":
        out = np.subtract(255, out, dtype=np.uint8)
    return out


def grey(frame: Image8) -> Image8:
    """ITU-R BT.601 luma of an RGB frame, or the frame itself when grey."""
    if frame.ndim == 2:
        return frame
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def content_score(frame: Image8) -> int:
    """Pixels brighter than :data:`CONTENT_LEVEL` (the ``"most_content"`` frame score)."""
    return int(np.count_nonzero(grey(frame) > CONTENT_LEVEL))


def _decode_error(ds: Dataset, exc: Exception) -> StageError:
    syntax = _transfer_syntax(ds)
    return StageError(f"pixel data ({syntax.name}) cannot be decoded: {exc}")


def decode_frames(ds: Dataset, indices: Sequence[int] | None = None) -> Image8:
    """Decode frames to 8-bit display values.

    Parameters
    ----------
    ds
        Any image data set with file meta information.
    indices
        Frames to decode, counting from 0; all frames when None.

    Returns
    -------
    numpy.ndarray
        uint8 of shape (F, H, W) for grey data or (F, H, W, 3) for colour.

    Raises
    ------
    StageError
        If there is no pixel data, it is damaged, or no decoder can read it.
    """
    _check_decodable(ds)
    count = frame_count(ds)
    wanted = list(range(count)) if indices is None else list(indices)
    bad = [i for i in wanted if not 0 <= i < count]
    if bad or not wanted:
        raise StageError(f"frame(s) {bad} requested from an image of {count} frame(s)")
    frames: list[Image8] = []
    for index in wanted:
        try:
            raw = pixel_array(ds, index=index if count > 1 else None)
        except _DECODE_ERRORS as exc:
            raise _decode_error(ds, exc) from exc
        frames.append(_to_display(raw, ds))
    return np.stack(frames)


def _iter_display(ds: Dataset) -> Iterator[Image8]:
    try:
        for raw in iter_pixels(ds):
            yield _to_display(raw, ds)
    except _DECODE_ERRORS as exc:
        raise _decode_error(ds, exc) from exc


def select_frame(ds: Dataset, rule: FrameRule = "middle") -> DecodedFrame:
    """Decode the one frame that goes on, chosen by ``rule`` (see the module notes).

    Raises
    ------
    StageError
        As :func:`decode_frames`, or for an unknown rule.
    """
    _check_decodable(ds)
    count = frame_count(ds)
    if rule == "middle":
        index = count // 2
        return DecodedFrame(index=index, pixels=decode_frames(ds, [index])[0])
    if rule == "most_content":
        best: DecodedFrame | None = None
        best_score = -1
        for index, frame in enumerate(_iter_display(ds)):
            score = content_score(frame)
            if score > best_score:
                best, best_score = DecodedFrame(index=index, pixels=frame), score
        if best is None:
            raise StageError("the image holds no frames")
        return best
    raise StageError(f"unknown frame rule {rule!r}; use 'middle' or 'most_content'")
