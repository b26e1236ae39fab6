"""Helpers for reading DICOM attribute values as text and dates."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pydicom.multival import MultiValue


def text_values(value: Any) -> list[str]:
    """The non-empty values of a (possibly multi-valued) element, as text."""
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for text in (str(item).strip() for item in items) if text]


def parse_da(value: str) -> date | None:
    """A DA value (``YYYYMMDD``) as a date; None when it is not a valid one."""
    if not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None
