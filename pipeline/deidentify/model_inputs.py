"""Model inputs: age in years, sex, and redaction of the patient's identifiers in text.

See :mod:`pipeline.deidentify` (Model inputs) for the rules.
"""

from __future__ import annotations

import re
from typing import Literal

from pydicom import Dataset

from pipeline.deidentify.values import parse_da

REDACTED = "[REDACTED]"
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER_YEAR = 365.25


def redact(text: str, pattern: re.Pattern[str] | None) -> tuple[str, int]:
    """``text`` with every match of ``pattern`` replaced, and the number replaced."""
    if pattern is None:
        return text, 0
    return pattern.subn(REDACTED, text)


def age_years(dataset: Dataset) -> float | None:
    """From Patient's Age, else from the birth date and the first study-level date."""
    match = _AGE.match(str(dataset.get("PatientAge", "")).strip())
    if match:
        number, unit = int(match[1]), match[2]
        days = {"D": 1.0, "W": 7.0, "M": _DAYS_PER_YEAR / 12, "Y": _DAYS_PER_YEAR}[unit]
        return round(number * days / _DAYS_PER_YEAR, 2)
    birth = parse_da(str(dataset.get("PatientBirthDate", "")).strip())
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        when = parse_da(str(dataset.get(keyword, "")).strip())
        if birth is not None and when is not None and when >= birth:
            return round((when - birth).days / _DAYS_PER_YEAR, 2)
    return None


def sex(dataset: Dataset) -> Literal["F", "M"] | None:
    """Patient's Sex as ``F`` or ``M``; None for anything else."""
    value = str(dataset.get("PatientSex", "")).strip().upper()
    if value == "F":
        return "F"
    if value == "M":
        return "M"
    return None
