"""Error text scrubbed of a study's header values before it reaches events, logs or the API.

An exception raised while a study is processed may quote a header value (a
date pydicom could not convert, a name in a path, an institution in a
message). A :class:`Redactor` knows the values that can identify someone in
the study's instances and replaces each occurrence with ``<KEYWORD>``.

Identifying values
    Every attribute PS3.15 Table E.1-1 does not keep (action other than
    ``K``), every private element, and every element of VR PN, DA, DT, TM or AS,
    at any depth, read as the sender wrote them (before
    :mod:`imaging.header_values` drops malformed ones). Values of two or three
    characters are replaced only as whole words, so a patient's sex ``M``
    (one character) is left and "Li" does not eat "Link"; longer ones anywhere.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from imaging.standard.basic_profile import ROWS

_IDENTIFYING_TAGS = frozenset(row.tag for row in ROWS if row.basic != "K")
_IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM", "AS"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST"})
_TEXT_VRS |= {"TM", "UC", "UR", "UT"}  # not UI: a UID names the study to the admin
_SHORTEST = 2
_WHOLE_WORD_BELOW = 4


@dataclass(frozen=True)
class Redactor:
    """Replaces known identifying values in text with the name of their attribute."""

    values: tuple[tuple[str, str], ...] = ()  # (value, keyword), longest value first

    def __call__(self, text: str) -> str:
        """``text`` with every known value replaced by ``<KEYWORD>``."""
        for value, keyword in self.values:
            if len(value) < _WHOLE_WORD_BELOW:
                text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", f"<{keyword}>", text)
            else:
                text = text.replace(value, f"<{keyword}>")
        return text


def identifying_values(dataset: Dataset) -> dict[str, str]:
    """The identifying values of ``dataset`` (module docstring), each with its keyword."""
    found: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _collect(dataset, found)
    return found


def study_redactor(paths: Iterable[Path]) -> Redactor:
    """A redactor for the identifying values of every readable instance in ``paths``."""
    found: dict[str, str] = {}
    for path in paths:
        try:
            dataset = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
            continue
        found.update(identifying_values(dataset))
    ordered = sorted(found.items(), key=lambda item: (-len(item[0]), item[0]))
    return Redactor(tuple(ordered))


def _collect(dataset: Dataset, found: dict[str, str]) -> None:
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
        except Exception:  # boundary: an undecodable element has no text to quote
            continue
        if element.VR == "SQ":
            for item in element.value or ():
                _collect(item, found)
            continue
        identifying = (
            int(tag) in _IDENTIFYING_TAGS or tag.is_private or element.VR in _IDENTIFYING_VRS
        )
        if not identifying or element.VR not in _TEXT_VRS:
            continue
        keyword = keyword_for_tag(tag) or "private"
        for text in _texts(element.value):
            found.setdefault(text, keyword)


def _texts(value: object) -> list[str]:
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    texts = []
    for item in items:
        text = str(item).strip()
        if len(text) >= _SHORTEST:
            texts.append(text)
            texts.extend(part for part in re.split(r"[\^=]", text) if len(part) >= _SHORTEST)
    return texts
