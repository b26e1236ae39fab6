"""De-identification: the PS3.15 Basic Application Level Confidentiality Profile on a working copy.

Every ultrasound image intake passed on is read from the spool, cleaned and
written as a new Part 10 file under ``work_dir / "deid"``; the spool is never
touched. Only these copies, the model inputs (age, sex, redacted report text)
and counts leave this stage; the pseudonym map goes to the job database
(:func:`keep_pseudonyms`) and never downstream.

Attributes (Table E.1-1, :mod:`pipeline.confidentiality_profile`)
    ``X`` removes; ``Z`` leaves a zero-length value (an empty sequence for SQ);
    ``D`` puts a dummy of the VR (``ANONYMIZED`` for text and names, 0 for
    numbers, 19000101 / 000000 for dates and times; a sequence keeps its items,
    each cleaned by the same rules); ``K`` keeps (a sequence's items are
    cleaned); ``U`` replaces every UID value (see below); ``C`` (clean, only in
    the option columns) shifts dates under the Modified Dates option and
    otherwise removes, since no value is known to be safe. Compound actions
    name what an IOD may require instead of removal; intake passes on only
    ultrasound and secondary-capture images, where none of these attributes is
    Type 1 or 2 (Acquisition DateTime is 1C, and zero-length is not allowed
    there), so ``X/Z``, ``X/D`` and ``X/Z/D`` remove; ``Z/D`` (Content Date and
    Time: Type 2C) gives a zero-length value; ``X/Z/U*`` keeps the sequence and
    cleans its items, so its UIDs are replaced consistently and references
    between the study's images stay valid.
Beyond the table (safety nets)
    Private attributes (odd groups) are removed, and so are curves
    ``(50xx,eeee)``, overlays ``(60xx,eeee)``, group lengths, command and file
    meta elements (the file meta is rebuilt), Encrypted Attributes and MAC
    Parameters, and elements whose VR is unknown (``UN``): they cannot be
    inspected. Person names (PN) and dates and times (DA, DT, TM) that the
    table does not list are handled like listed ones (PN removed; dates
    removed, or shifted/kept under the longitudinal options). Other UIDs that
    are not DICOM-defined (root 1.2.840.10008) are replaced too. Finally any
    kept text value that contains one of the patient's identifiers (name
    parts, IDs, accession number, birth date) is removed.
UIDs
    A new UID is ``2.25.<n>`` where ``n`` is a version-4-shaped UUID made from
    HMAC-SHA256(salt, original UID): the same original gets the same new UID
    in every instance of the study, including references inside sequences.
    The salt is drawn afresh for every run unless
    :attr:`DeidentificationOptions.secret` is set; the pairs are kept in the
    pseudonym map. Patient ID and Accession Number (``Z``) get dummy values
    derived the same way (``P`` / ``A`` and 15 hex digits), also mapped.
Pixels (Clean Pixel Data)
    All frames are decoded and, outside the image area, set to zero; the copy
    is written uncompressed (Explicit VR Little Endian): colour as 8-bit
    ``RGB`` (YBR and palette colour converted), grey as ``MONOCHROME2`` at the
    original bit depth (``MONOCHROME1`` inverted). The image area is the union
    of the regions of the Sequence of Ultrasound Regions with Region Spatial
    Format 1 (2D). An image whose regions hold no 2D region is not passed on.
Fallback without regions
    The image area is detected conservatively: pixels brighter than
    :data:`DARK_LEVEL` (the brightest frame of a cine counts) are kept only
    where at least :data:`AREA_DENSITY` of their neighbourhood is bright, then
    opened (thin strokes such as burned-in text vanish); the largest connected
    area, holes filled and shrunk by :data:`AREA_MARGIN` pixels, is the image
    area; everything else, including all text apart from it, is zeroed. An
    image where that area is under :data:`MIN_AREA_FRACTION` of the frame is
    not passed on. If no image is left the stage fails.
Model inputs
    Age in years from Patient's Age, else from Patient's Birth Date and the
    Study (or Series, Acquisition, Content) Date; sex ``F``/``M`` or None; the
    report text of intake's structured reports with every occurrence of the
    patient's name parts, IDs, accession number and birth date (several date
    spellings) replaced by ``[REDACTED]``. They are stage outputs, never
    written into the copy unless :attr:`DeidentificationOptions.retain_patient_characteristics`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import secrets
import struct
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from sqlalchemy.orm import Session

from db.models import PseudonymKind
from db.queries import PseudonymEntry, save_pseudonyms
from pipeline.confidentiality_profile import RULES, BasicAction, ProfileRule
from pipeline.contracts import DeidentifiedImage, DeidentifiedStudy, ModelInputs
from pipeline.intake import IntakeReport, UltrasoundImage
from pipeline.stage import Stage, StageError

# Fallback image-area detector (images without a Sequence of Ultrasound Regions).
DARK_LEVEL = 12 / 255  # of the full scale: brighter counts as image content
AREA_DENSITY = 0.6  # share of bright pixels a neighbourhood needs to count as image
AREA_MARGIN = 2  # pixels the detected area is shrunk by
MIN_AREA_FRACTION = 0.1  # a smaller detected area makes the image unusable

REDACTED = "[REDACTED]"
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, Any] = {
    "AE": _DUMMY_TEXT,
    "AS": "000D",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "UC": _DUMMY_TEXT,
    "UT": _DUMMY_TEXT,
    "IS": "0",
    "DS": "0",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}
_TEXT_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
_ENCRYPTED_ATTRIBUTES = 0x04000500
_MAC_PARAMETERS = 0x4FFE0001
_PATIENT_ID = 0x00100020
_ACCESSION_NUMBER = 0x00080050
# Palette descriptions and data, and smallest/largest pixel values (no longer true).
_PALETTE_ELEMENTS = (
    *(0x00281101, 0x00281102, 0x00281103, 0x00281104, 0x00281111, 0x00281112, 0x00281113),
    *(0x00281199, 0x00281201, 0x00281202, 0x00281203, 0x00281204, 0x00281211, 0x00281212),
    *(0x00281213, 0x00281214, 0x00281221, 0x00281222, 0x00281223, 0x00280106, 0x00280107),
)
_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    KeyError,
    AttributeError,
    TypeError,
    IndexError,
    struct.error,
    zlib.error,
    OSError,
)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER_YEAR = 365.25


class LongitudinalDates(enum.StrEnum):
    """What happens to dates and times (Retain Longitudinal Temporal Information options)."""

    REMOVE = "remove"  # Basic Profile only
    MODIFIED = "modified"  # shifted by a per-patient offset kept only in the job database
    FULL = "full"  # kept as they are


@dataclass(frozen=True)
class DeidentificationOptions:
    """Which Annex E options apply; the defaults are the Basic Profile with Clean Pixel Data."""

    longitudinal_dates: LongitudinalDates = LongitudinalDates.REMOVE
    # Keep age, sex, size, weight... in the copy too. Age and sex are model
    # inputs either way; by default they only travel as stage outputs.
    retain_patient_characteristics: bool = False
    # A site secret: pseudonyms (UIDs, IDs, date offsets) become the same in
    # every job. None: a fresh random salt per run, so every job differs.
    secret: bytes | None = None


DEFAULT_OPTIONS = DeidentificationOptions()


@dataclass(frozen=True)
class Deidentification:
    """The stage's result: the study for later stages, and the map only the database keeps."""

    study: DeidentifiedStudy
    pseudonyms: tuple[PseudonymEntry, ...]
    options: DeidentificationOptions
    method_codes: tuple[str, ...]  # CID 7050 code values in the copies
    attribute_actions: dict[str, int]  # how many attributes each action affected
    cleaned_to_regions: int
    cleaned_by_detector: int
    unusable_images: tuple[str, ...]  # why images were not passed on (no identifiers)
    report_redactions: int


# --- pseudonyms -------------------------------------------------------------------------------


class _Pseudonymizer:
    """Deterministic replacements from one salt; remembers every pair it made."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self._pairs: dict[tuple[PseudonymKind, str], str] = {}

    def _digest(self, kind: PseudonymKind, original: str) -> bytes:
        return hmac.new(self._salt, f"{kind.value}:{original}".encode(), hashlib.sha256).digest()

    def _remember(self, kind: PseudonymKind, original: str, pseudonym: str) -> str:
        self._pairs[(kind, original)] = pseudonym
        return pseudonym

    def uid(self, original: str) -> str:
        """A ``2.25`` UID for ``original``; an empty value stays empty."""
        if not original:
            return original
        value = uuid.UUID(bytes=self._digest(PseudonymKind.UID, original)[:16], version=4)
        return self._remember(PseudonymKind.UID, original, f"2.25.{value.int}")

    def identifier(self, kind: PseudonymKind, original: str) -> str:
        """A 16-character dummy ID (fits SH and LO); an empty value stays empty."""
        if not original:
            return original
        prefix = "P" if kind is PseudonymKind.PATIENT_ID else "A"
        code = self._digest(kind, original).hex()[:15].upper()
        return self._remember(kind, original, prefix + code)

    def date_offset(self, patient_id: str) -> int:
        """Days (1 to 10 years back) by which this patient's dates move."""
        value = int.from_bytes(self._digest(PseudonymKind.DATE_OFFSET, patient_id)[:4], "big")
        days = -(365 + value % (3653 - 365))
        self._remember(PseudonymKind.DATE_OFFSET, patient_id, str(days))
        return days

    def entries(self) -> tuple[PseudonymEntry, ...]:
        """Every pair made so far."""
        return tuple(
            PseudonymEntry(kind=kind, original=original, pseudonym=pseudonym)
            for (kind, original), pseudonym in self._pairs.items()
        )


# --- the patient's identifiers (for redaction) ---------------------------------------------------


def _text_values(value: Any) -> list[str]:
    """The non-empty values of a (possibly multi-valued) element, as text."""
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for text in (str(item).strip() for item in items) if text]


def _identifiers(datasets: Iterable[Dataset]) -> frozenset[str]:
    """Name parts, IDs, accession numbers and birth dates of the patient, as text."""
    found: set[str] = set()
    keywords = (
        "PatientName",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientID",
        "OtherPatientIDs",
        "AccessionNumber",
        "PatientBirthDate",
        "MedicalRecordLocator",
        "AdmissionID",
    )
    for dataset in datasets:
        for keyword in keywords:
            for text in _text_values(dataset.get(keyword)):
                found.add(text)
                if keyword.endswith(("Name", "Names")):
                    found.update(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 2)
        for item in dataset.get("OtherPatientIDsSequence", []):
            found.update(_text_values(item.get("PatientID")))
    for text in list(found):
        if re.fullmatch(r"\d{8}", text):
            y, m, d = text[:4], text[4:6], text[6:]
            found.update({f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"})
            found.update({f"{m}/{d}/{y}", f"{d}-{m}-{y}", f"{y}.{m}.{d}"})
    # Shorter values (an accession number "7") cannot be told from ordinary text.
    return frozenset(t for t in found if len(t) >= 3 or (len(t) == 2 and t.isalpha()))


def _identifier_pattern(identifiers: frozenset[str], *, loose: bool) -> re.Pattern[str] | None:
    """Case-insensitive matcher for the identifiers, longest first.

    Identifiers match as whole words; with ``loose``, those of four or more
    characters match anywhere (for attribute values, where removing too much
    costs little).
    """
    if not identifiers:
        return None
    alternatives = []
    for token in sorted(identifiers, key=len, reverse=True):
        word = re.escape(token)
        if not (loose and len(token) >= 4):
            word = rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])"
        alternatives.append(word)
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _redact(text: str, pattern: re.Pattern[str] | None) -> tuple[str, int]:
    if pattern is None:
        return text, 0
    return pattern.subn(REDACTED, text)


# --- attributes --------------------------------------------------------------------------------


def _parse_da(value: str) -> date | None:
    if not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


class _HeaderCleaner:
    """Applies Table E.1-1 (and the safety nets) to a dataset, building a new one."""

    def __init__(
        self,
        *,
        options: DeidentificationOptions,
        pseudonyms: _Pseudonymizer,
        identifiers: re.Pattern[str] | None,
    ) -> None:
        self._options = options
        self._pseudonyms = pseudonyms
        self._identifiers = identifiers
        self.actions: Counter[str] = Counter()
        self._offset_days = 0

    def clean(self, source: Dataset) -> Dataset:
        """A de-identified copy of ``source``'s attributes, without its pixel data."""
        if self._options.longitudinal_dates is LongitudinalDates.MODIFIED:
            self._offset_days = self._pseudonyms.date_offset(str(source.get("PatientID", "")))
        return self._dataset(source)

    def _dataset(self, source: Dataset) -> Dataset:
        out = Dataset()
        for element in source:
            cleaned = self._element(element)
            if cleaned is not None:
                out.add(cleaned)
        return out

    def _element(self, element: DataElement) -> DataElement | None:
        tag: BaseTag = element.tag
        group = tag.group
        if tag.is_private:
            self.actions["private_removed"] += 1
            return None
        if (
            tag.element == 0
            or group in (0x0000, 0x0002, 0x7FE0)
            or (group & 0xFF00) in (0x5000, 0x6000)
            or tag in (_ENCRYPTED_ATTRIBUTES, _MAC_PARAMETERS)
            or element.VR == "UN"
        ):
            self.actions["removed"] += 1
            return None
        action = self._action(RULES.get(int(tag)), element.VR)
        return self._apply(action, element)

    def _action(self, rule: ProfileRule | None, vr: str) -> str:
        options = self._options
        temporal = rule.temporal if rule is not None else vr in _TEMPORAL_VRS
        if temporal and options.longitudinal_dates is LongitudinalDates.FULL:
            return "K"
        if temporal and options.longitudinal_dates is LongitudinalDates.MODIFIED:
            return "shift"
        if rule is None:
            if vr == "PN" or temporal:
                return "X"
            if vr == "UI":
                return "U?"
            return "K"
        if options.retain_patient_characteristics and rule.patient_characteristics is not None:
            # C: no value of these attributes is known to be safe, so none is kept.
            return "K" if rule.patient_characteristics == "K" else "X"
        return _resolve(rule.basic)

    def _apply(self, action: str, element: DataElement) -> DataElement | None:
        tag, vr = element.tag, element.VR
        if action == "X":
            self.actions["removed"] += 1
            return None
        if action == "Z":
            if tag in (_PATIENT_ID, _ACCESSION_NUMBER):
                return self._pseudonymized(element)
            self.actions["emptied"] += 1
            return DataElement(tag, vr, Sequence() if vr == "SQ" else None)
        if action == "D":
            return self._dummy(element)
        if action in ("U", "U?"):
            return self._uids(element, only_private=action == "U?")
        if action == "shift":
            return self._shifted(element)
        # K and U*: keep, cleaning sequence items and checking text.
        if vr == "SQ":
            return DataElement(tag, vr, Sequence([self._dataset(item) for item in element.value]))
        if vr in _TEXT_VRS and self._carries_identifier(element.value):
            self.actions["scrubbed"] += 1
            return None
        return DataElement(tag, vr, element.value)

    def _carries_identifier(self, value: Any) -> bool:
        identifiers = self._identifiers
        return identifiers is not None and any(
            identifiers.search(text) for text in _text_values(value)
        )

    def _pseudonymized(self, element: DataElement) -> DataElement:
        kind = (
            PseudonymKind.PATIENT_ID
            if element.tag == _PATIENT_ID
            else (PseudonymKind.ACCESSION_NUMBER)
        )
        self.actions["pseudonymized"] += 1
        original = str(element.value or "").strip()
        return DataElement(element.tag, element.VR, self._pseudonyms.identifier(kind, original))

    def _dummy(self, element: DataElement) -> DataElement | None:
        vr = element.VR
        if vr == "SQ":
            self.actions["dummy"] += 1
            items = [self._dataset(item) for item in element.value]
            return DataElement(element.tag, vr, Sequence(items))
        if vr == "UI":
            return self._uids(element, only_private=False)
        if vr not in _DUMMY_BY_VR:
            self.actions["removed"] += 1
            return None
        self.actions["dummy"] += 1
        return DataElement(element.tag, vr, _DUMMY_BY_VR[vr])

    def _uids(self, element: DataElement, *, only_private: bool) -> DataElement:
        values = list(_text_values(element.value))
        replaced = [
            v if only_private and not UID(v).is_private else self._pseudonyms.uid(v) for v in values
        ]
        if replaced != values:
            self.actions["uids_replaced"] += 1
        value: Any = replaced if len(replaced) > 1 else (replaced[0] if replaced else None)
        return DataElement(element.tag, element.VR, value)

    def _shifted(self, element: DataElement) -> DataElement | None:
        vr = element.VR
        if vr not in ("DA", "DT"):
            # Times of day and time zones stay: the shift is whole days.
            return DataElement(element.tag, vr, element.value)
        shifted: list[str] = []
        for value in _text_values(element.value):
            day = _parse_da(value[:8])
            if day is None:
                self.actions["removed"] += 1
                return None
            shifted.append((day + timedelta(days=self._offset_days)).strftime("%Y%m%d") + value[8:])
        self.actions["dates_shifted"] += 1
        value_out: Any = shifted if len(shifted) > 1 else (shifted[0] if shifted else None)
        return DataElement(element.tag, vr, value_out)


def _resolve(basic: BasicAction) -> str:
    """A compound action of Table E.1-1 as the one this node applies (module docstring)."""
    return {"X/Z": "X", "Z/D": "Z", "X/Z/D": "X", "X/D": "X", "X/Z/U*": "U*", "C": "X"}.get(
        basic, basic
    )


# --- pixels -------------------------------------------------------------------------------------

Pixels = NDArray[np.generic]


@dataclass(frozen=True)
class _DecodedPixels:
    array: Pixels  # (frames, rows, columns) or (frames, rows, columns, 3)
    photometric_interpretation: Literal["RGB", "MONOCHROME2"]
    bits_stored: int


def _decode(dataset: Dataset, label: str) -> _DecodedPixels:
    """Every frame, as RGB or MONOCHROME2.

    Raises
    ------
    StageError
        If the pixel data cannot be decoded or has an unsupported colour model.
    """
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    try:
        decoder = get_decoder(dataset.file_meta.TransferSyntaxUID)
        decode_options: dict[str, Any] = {"as_rgb": True}
        array, meta = decoder.as_array(dataset, **decode_options)
        photometric = str(meta["photometric_interpretation"])
        bits_stored = int(meta["bits_stored"])
        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, dataset)
            if array.dtype.itemsize > 1:
                # 16-bit entries; some writers put 8-bit values in them.
                scale = 257 if int(array.max(initial=0)) > 255 else 1
                array = ((array.astype(np.uint32) + scale // 2) // scale).astype(np.uint8)
            photometric, bits_stored = "RGB", 8
        elif photometric.startswith("YBR"):
            array = convert_color_space(array, photometric, "RGB")
            photometric = "RGB"
    except _DECODE_ERRORS as exc:
        raise StageError(f"{label}: pixel data cannot be decoded ({exc})") from exc
    if not array.flags.writeable:
        array = array.copy()
    if photometric == "MONOCHROME1":
        array = (2**bits_stored - 1) - array
        photometric = "MONOCHROME2"
    if photometric not in ("RGB", "MONOCHROME2"):
        raise StageError(f"{label}: photometric interpretation {photometric} is not supported")
    samples = 3 if photometric == "RGB" else 1
    shape = (frames, rows, columns) + ((3,) if samples == 3 else ())
    if array.size != int(np.prod(shape)):
        raise StageError(f"{label}: decoded pixels do not match rows, columns and frames")
    return _DecodedPixels(
        array=array.reshape(shape),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        bits_stored=bits_stored,
    )


def _region_area(dataset: Dataset, rows: int, columns: int) -> NDArray[np.bool_]:
    """Union of the 2D regions (Region Spatial Format 1); the Max corners are inclusive."""
    area = np.zeros((rows, columns), dtype=bool)
    for region in dataset.SequenceOfUltrasoundRegions:
        if region.get("RegionSpatialFormat") != 1:
            continue
        corners = [
            region.get(k)
            for k in (
                "RegionLocationMinX0",
                "RegionLocationMinY0",
                "RegionLocationMaxX1",
                "RegionLocationMaxY1",
            )
        ]
        if any(c is None for c in corners):
            continue
        x0, y0, x1, y1 = (int(c) for c in corners)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, columns - 1), min(y1, rows - 1)
        if x1 >= x0 and y1 >= y0:
            area[y0 : y1 + 1, x0 : x1 + 1] = True
    return area


def _detected_area(pixels: _DecodedPixels) -> NDArray[np.bool_]:
    """The fallback image area: the largest dense bright area, text strokes opened away."""
    brightest = pixels.array.max(axis=0)  # (rows, columns[, 3])
    if brightest.ndim == 3:
        brightest = brightest.max(axis=2)
    bright = (brightest > DARK_LEVEL * (2**pixels.bits_stored - 1)).astype(np.float32)
    size = min(bright.shape)
    window = max(5, round(size / 40)) | 1
    opening = max(3, round(size / 96)) | 1
    dense = (cv2.blur(bright, (window, window)) >= AREA_DENSITY).astype(np.uint8)
    solid = cv2.morphologyEx(dense, cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if count <= 1:
        return np.zeros(bright.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours(
        (labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    filled = cv2.drawContours(np.zeros_like(solid), contours, -1, 1, thickness=cv2.FILLED)
    shrunk = cv2.erode(filled, np.ones((3, 3), np.uint8), iterations=AREA_MARGIN)
    return np.asarray(shrunk, dtype=bool)


def _set_pixels(dataset: Dataset, pixels: _DecodedPixels, *, multi_frame: bool) -> None:
    """Write ``pixels`` as native Pixel Data with a matching Image Pixel description."""
    for tag in _PALETTE_ELEMENTS:
        if tag in dataset:
            del dataset[tag]
    array = np.ascontiguousarray(pixels.array)
    frames, rows, columns = array.shape[:3]
    colour = pixels.photometric_interpretation == "RGB"
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.PhotometricInterpretation = pixels.photometric_interpretation
    if colour:
        dataset.PlanarConfiguration = 0
    elif "PlanarConfiguration" in dataset:
        del dataset.PlanarConfiguration
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated = array.dtype.itemsize * 8
    dataset.BitsStored = pixels.bits_stored
    dataset.HighBit = pixels.bits_stored - 1
    dataset.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
    if multi_frame or frames > 1:
        dataset.NumberOfFrames = frames
    dataset.add(DataElement(0x7FE00010, "OB" if array.dtype.itemsize == 1 else "OW", b""))
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    dataset.PixelData = data + (b"\0" if len(data) % 2 else b"")


# --- model inputs ------------------------------------------------------------------------------


def _age_years(dataset: Dataset) -> float | None:
    match = _AGE.match(str(dataset.get("PatientAge", "")).strip())
    if match:
        number, unit = int(match[1]), match[2]
        days = {"D": 1.0, "W": 7.0, "M": _DAYS_PER_YEAR / 12, "Y": _DAYS_PER_YEAR}[unit]
        return round(number * days / _DAYS_PER_YEAR, 2)
    birth = _parse_da(str(dataset.get("PatientBirthDate", "")).strip())
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        when = _parse_da(str(dataset.get(keyword, "")).strip())
        if birth is not None and when is not None and when >= birth:
            return round((when - birth).days / _DAYS_PER_YEAR, 2)
    return None


def _sex(dataset: Dataset) -> Literal["F", "M"] | None:
    value = str(dataset.get("PatientSex", "")).strip().upper()
    if value == "F":
        return "F"
    if value == "M":
        return "M"
    return None


# --- the stage ---------------------------------------------------------------------------------


def _read(path: Path, label: str, *, pixels: bool) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error, OSError) as exc:
        raise StageError(f"{label}: file cannot be read ({type(exc).__name__})") from exc


def _method_codes(options: DeidentificationOptions) -> list[tuple[str, str]]:
    codes = [
        ("113100", "Basic Application Confidentiality Profile"),
        ("113101", "Clean Pixel Data Option"),
    ]
    if options.longitudinal_dates is LongitudinalDates.FULL:
        codes.append(("113106", "Retain Longitudinal Temporal Information Full Dates Option"))
    if options.longitudinal_dates is LongitudinalDates.MODIFIED:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    if options.retain_patient_characteristics:
        codes.append(("113108", "Retain Patient Characteristics Option"))
    return codes


def _mark_deidentified(dataset: Dataset, options: DeidentificationOptions) -> None:
    codes = _method_codes(options)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning[:64] for _, meaning in codes]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    dataset.BurnedInAnnotation = "NO"
    dataset.LongitudinalTemporalInformationModified = {
        LongitudinalDates.REMOVE: "REMOVED",
        LongitudinalDates.MODIFIED: "MODIFIED",
        LongitudinalDates.FULL: "UNMODIFIED",
    }[options.longitudinal_dates]


def _write(dataset: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(dataset.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(dataset.SOPInstanceUID))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    dataset.save_as(path, enforce_file_format=True)


def deidentify(
    report: IntakeReport, options: DeidentificationOptions = DEFAULT_OPTIONS
) -> Deidentification:
    """De-identify the study's ultrasound images into ``work_dir / "deid"``.

    Raises
    ------
    StageError
        If an image cannot be read or decoded, or no image has a usable image area.
    """
    study = report.study
    labels = [f"image {n}" for n in range(1, len(report.images) + 1)]
    headers = [
        _read(image.ref.path, label, pixels=False)
        for image, label in zip(report.images, labels, strict=True)
    ]
    report_headers = [
        _read(document.ref.path, f"report {n + 1}", pixels=False)
        for n, document in enumerate(report.reports)
    ]
    identifiers = _identifiers([*headers, *report_headers])
    pseudonyms = _Pseudonymizer(options.secret or secrets.token_bytes(32))
    cleaner = _HeaderCleaner(
        options=options,
        pseudonyms=pseudonyms,
        identifiers=_identifier_pattern(identifiers, loose=True),
    )
    out_dir = study.work_dir / "deid"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.dcm"):
        stale.unlink()

    images: list[DeidentifiedImage] = []
    unusable: list[str] = []
    by_regions = by_detector = 0
    for image, label in zip(report.images, labels, strict=True):
        path = out_dir / f"{len(images) + 1}.dcm"
        result = _deidentify_image(image, label, cleaner, options, path)
        if isinstance(result, str):
            unusable.append(result)
            continue
        images.append(result)
        by_regions += result.has_ultrasound_regions
        by_detector += not result.has_ultrasound_regions
    if not images:
        raise StageError("no image has a usable image area: " + "; ".join(unusable))

    texts = [document.text for document in report.reports]
    report_text, redactions = _redact(
        "\n\n".join(texts), _identifier_pattern(identifiers, loose=False)
    )
    all_headers = [*headers, *report_headers]
    inputs = ModelInputs(
        age_years=next((a for a in map(_age_years, all_headers) if a is not None), None),
        sex=next((s for s in map(_sex, all_headers) if s is not None), None),
        report_text=report_text if texts else None,
    )
    return Deidentification(
        study=DeidentifiedStudy(
            job_id=study.job_id,
            study_instance_uid=pseudonyms.uid(study.study_instance_uid),
            images=tuple(images),
            inputs=inputs,
            work_dir=study.work_dir,
        ),
        pseudonyms=pseudonyms.entries(),
        options=options,
        method_codes=tuple(code for code, _ in _method_codes(options)),
        attribute_actions=dict(cleaner.actions),
        cleaned_to_regions=by_regions,
        cleaned_by_detector=by_detector,
        unusable_images=tuple(unusable),
        report_redactions=redactions,
    )


def _deidentify_image(
    image: UltrasoundImage,
    label: str,
    cleaner: _HeaderCleaner,
    options: DeidentificationOptions,
    path: Path,
) -> DeidentifiedImage | str:
    """Clean one image into a file at ``path``; a string says why it is not usable."""
    dataset = _read(image.ref.path, label, pixels=True)
    if "PixelData" not in dataset:
        raise StageError(f"{label}: no Pixel Data")
    pixels = _decode(dataset, label)
    rows, columns = pixels.array.shape[1:3]
    has_regions = "SequenceOfUltrasoundRegions" in dataset
    if has_regions:
        area = _region_area(dataset, rows, columns)
        if not area.any():
            return f"{label}: its ultrasound regions hold no 2D region"
    else:
        area = _detected_area(pixels)
        if area.sum() < MIN_AREA_FRACTION * rows * columns:
            return f"{label}: no image area found (no ultrasound regions)"
    pixels.array[:, ~area] = 0
    out = cleaner.clean(dataset)
    if "SOPInstanceUID" not in out or "SOPClassUID" not in out:
        raise StageError(f"{label}: no SOP Instance UID or SOP Class UID")
    _set_pixels(out, pixels, multi_frame="NumberOfFrames" in dataset)
    _mark_deidentified(out, options)
    _write(out, path)
    return DeidentifiedImage(
        path=path,
        sop_instance_uid=str(out.SOPInstanceUID),
        frames=pixels.array.shape[0],
        rows=rows,
        columns=columns,
        has_ultrasound_regions=has_regions,
    )


def summarize_deidentification(result: Deidentification) -> dict[str, Any]:
    """Counts and options for the audit trail: no identifiers, original or pseudonymous."""
    kinds = Counter(entry.kind.value for entry in result.pseudonyms)
    inputs = result.study.inputs
    return {
        "images_written": len(result.study.images),
        "frames": sum(image.frames for image in result.study.images),
        "cleaned_to_ultrasound_regions": result.cleaned_to_regions,
        "cleaned_by_detected_area": result.cleaned_by_detector,
        "unusable_images": list(result.unusable_images),
        "options": {
            k: (v.value if isinstance(v, enum.Enum) else v)
            for k, v in asdict(result.options).items()
            if k != "secret"
        },
        "site_secret": result.options.secret is not None,
        "method_codes": list(result.method_codes),
        "attribute_actions": dict(sorted(result.attribute_actions.items())),
        "pseudonyms": dict(sorted(kinds.items())),
        "model_inputs": {
            "age": inputs.age_years is not None,
            "sex": inputs.sex is not None,
            "report_text": inputs.report_text is not None,
            "report_redactions": result.report_redactions,
        },
    }


def keep_pseudonyms(session: Session, job_id: int, result: Deidentification) -> DeidentifiedStudy:
    """Store the pseudonym map in the job database; only the study goes on."""
    save_pseudonyms(session, job_id=job_id, entries=result.pseudonyms)
    return result.study


def deidentify_stage(options: DeidentificationOptions) -> Stage[IntakeReport, Deidentification]:
    """The stage with non-default options."""
    return Stage[IntakeReport, Deidentification](
        name="deidentify",
        run=functools.partial(deidentify, options=options),
        summarize=summarize_deidentification,
        store=keep_pseudonyms,
    )


DEIDENTIFY = deidentify_stage(DEFAULT_OPTIONS)
