"""Header values checked against their Value Representation before the node uses them.

Every stage that reads an original instance's header, and every result object
built on one, sees it through :func:`normalise_header`, so a malformed value
never reaches a date calculation, a de-identification rule or a result object.

Rules (PS3.5 Table 6.2-1)
    DA ``YYYYMMDD`` (a real day), TM ``HH[MM[SS[.F{1,6}]]]``, DT ``YYYY[MM[DD[HH[MM[SS[.F]]]]]]``
    with an optional ``&ZZXX`` offset, AS ``nnnD|W|M|Y``, IS a whole number within 32
    bits, DS a decimal string of at most 16 characters, PN at most three component
    groups of five components, no control characters but ESC, at most 64 characters
    per group.
    A value that breaks its rule is dropped from a multi-valued element; an element
    left without valid values gets a zero-length value, as PS3.15 Annex E's ``Z``
    action does; one of these VRs whose bytes do not decode is removed. Only elements
    of these VRs and sequences are decoded here (by the VR as read, else the
    dictionary's): this runs on the listener's hot path.
Character sets
    A Specific Character Set with a term that no decoder knows becomes
    ``ISO_IR 100`` (Latin-1, which decodes every byte) before any text is read.
Pixel module
    Rows, Columns, Number of Frames, Bits Allocated and Samples per Pixel are not
    repaired (a guess would misread the pixels); intake checks them
    (:func:`pixel_module_problem`).

What changed is returned as attribute keywords, never values: the caller may
record them anywhere.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Collection
from datetime import date
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

FALLBACK_CHARACTER_SET = "ISO_IR 100"
PIXEL_MODULE = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel")
_PIXEL_MODULE_TAGS = {0x00280010, 0x00280011, 0x00280008, 0x00280100, 0x00280002}

_TM = re.compile(r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?")
_DT = re.compile(
    r"\d{4}(?:(?:0[1-9]|1[0-2])(?:(?:0[1-9]|[12]\d|3[01])"
    r"(?:(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?)?)?)?"
    r"(?:[+-](?:[01]\d|2[0-3])[0-5]\d)?"
)
_AS = re.compile(r"\d{3}[DWMY]")
_IS = re.compile(r"[+-]?\d{1,12}")
_DS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_CHECKED_VRS = frozenset({"DA", "TM", "DT", "AS", "IS", "DS", "PN", "SQ"})
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # ESC (0x1b) starts ISO 2022 escapes


def valid_da(text: str) -> bool:
    """Whether ``text`` is a DA value of a real day."""
    if not re.fullmatch(r"\d{8}", text):
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _valid_dt(text: str) -> bool:
    if not _DT.fullmatch(text):
        return False
    return len(text) < 8 or not text[:8].isdigit() or valid_da(text[:8])


def _valid_is(text: str) -> bool:
    return bool(_IS.fullmatch(text)) and -(2**31) <= int(text) < 2**31


def _valid_pn(text: str) -> bool:
    groups = text.split("=")
    return (
        len(groups) <= 3
        and not _CONTROL.search(text)
        and all(len(g) <= 64 and g.count("^") <= 4 for g in groups)
    )


_RULES = {
    "DA": valid_da,
    "TM": lambda t: bool(_TM.fullmatch(t)),
    "DT": _valid_dt,
    "AS": lambda t: bool(_AS.fullmatch(t)),
    "IS": _valid_is,
    "DS": lambda t: len(t) <= 16 and bool(_DS.fullmatch(t)),
    "PN": _valid_pn,
}


def normalise_header(dataset: Dataset) -> tuple[str, ...]:
    """Repair ``dataset`` in place (module docstring); the keywords of what changed, sorted."""
    changed: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns with the offending value in the text
        _normalise_character_set(dataset, changed)
        _normalise(dataset, changed)
    return tuple(sorted(changed))


def normalise_elements(dataset: Dataset, keywords: Collection[str]) -> tuple[str, ...]:
    """``normalise_header`` of the top-level elements named by ``keywords`` only.

    For a reader that uses a few values of a header that a later reader normalises
    whole (the listener: the rest costs it ~3 ms an instance). The character set is
    checked first, as there.
    """
    changed: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _normalise_character_set(dataset, changed)
        part = Dataset()
        for keyword in ("SpecificCharacterSet", *keywords):
            tag = tag_for_keyword(keyword)
            if tag is not None and tag in dataset:
                part[tag] = dataset.get_item(tag)  # decoded in ``part``, with its character set
        _normalise(part, changed)
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            if tag is None or tag not in dataset:
                continue
            if tag not in part:  # did not decode
                del dataset[tag]
            elif not isinstance(part.get_item(tag), RawDataElement):  # decoded (and checked)
                dataset[tag] = part[tag]
    return tuple(sorted(changed))


def pixel_module_problem(dataset: Dataset) -> str | None:
    """Which pixel module attribute of ``dataset`` is not a usable number, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in PIXEL_MODULE:
            value = dataset.get(keyword)
            if value is None or (keyword == "NumberOfFrames" and value == ""):
                continue
            if not isinstance(value, int) or value < 1:
                return f"{keyword} is not a positive whole number"
    return None


def _normalise_character_set(dataset: Dataset, changed: set[str]) -> None:
    terms = dataset.get("SpecificCharacterSet")
    if terms is None:
        return
    values = list(terms) if isinstance(terms, MultiValue | list) else [terms]
    known = all(str(t).strip() in python_encoding or not str(t).strip() for t in values)
    if not known:
        dataset.SpecificCharacterSet = FALLBACK_CHARACTER_SET
        changed.add("SpecificCharacterSet")


def _normalise(dataset: Dataset, changed: set[str]) -> None:
    for tag in list(dataset.keys()):
        if tag == 0x7FE00010 or int(tag) in _PIXEL_MODULE_TAGS:
            continue
        if _declared_vr(dataset, tag) not in _CHECKED_VRS:
            continue  # left as read: converting every element would cost ~1 ms an instance
        try:
            element = dataset[tag]
        except (ValueError, TypeError, KeyError, struct.error):  # undecodable bytes
            del dataset[tag]
            changed.add(_name(tag))
            continue
        if element.VR == "SQ":
            for item in element.value or ():
                _normalise(item, changed)
            continue
        rule = _RULES.get(str(element.VR))
        if rule is not None and _repair(element, rule):
            changed.add(_name(tag))


def _declared_vr(dataset: Dataset, tag: BaseTag) -> str | None:
    """The VR of ``tag`` as read (explicit VR), else from the dictionary; None if unknown."""
    raw = dataset.get_item(tag)
    if raw is not None and raw.VR:
        return str(raw.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _repair(element: DataElement, rule: Any) -> bool:
    """Drop the values of ``element`` that break ``rule``; whether anything was dropped."""
    value = element.value
    if value is None or value == "":
        return False
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    kept = [item for item in items if _text(item) == "" or rule(_text(item))]
    if len(kept) == len(items):
        return False
    element.value = "" if not kept else kept[0] if len(kept) == 1 else kept
    return True


def _text(item: Any) -> str:
    original = getattr(item, "original_string", None)  # IS, DS: as written; PN: bytes
    return str(original if isinstance(original, str) else item).strip()


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
