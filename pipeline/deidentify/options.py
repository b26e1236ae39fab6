"""The Annex E options this node supports (see :mod:`pipeline.deidentify`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
