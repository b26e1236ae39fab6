"""PS3.15 Annex E, Table E.1-1 as the rules header cleaning applies.

The table comes from :mod:`imaging.standard.basic_profile`, generated from a
maintained source with its edition recorded (``EDITION``, ``SOURCE``). Of its
columns this node uses three:

``basic``
    The Basic Profile action: ``D`` (replace with a dummy value of the VR),
    ``Z`` (zero-length or dummy value), ``X`` (remove), ``K`` (keep), ``C``
    (clean), ``U`` (replace the UID consistently), or a compound action where
    the choice depends on the IOD (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``,
    ``X/Z/U*``). :mod:`pipeline.deidentify` documents how each is resolved.
``temporal``
    The Retain Longitudinal Temporal Information options name the attribute
    (Full Dates: keep; Modified Dates: clean, i.e. shift).
``patient_characteristics``
    The Retain Patient Characteristics option's action (``K`` or ``C``).

Rows that are patterns rather than single tags (private attributes: odd
groups; Curve Data ``(50xx,xxxx)``; Overlay Data and Comments
``(60xx,3000)`` and ``(60xx,4000)``) are rules in :mod:`pipeline.deidentify.headers`.
The other option columns (retain UIDs, device or institution identity, clean
descriptors/structured content/graphics, safe private) are not used here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from imaging.standard.basic_profile import ROWS, Row
from imaging.standard.basic_profile import Action as BasicAction
from imaging.standard.basic_profile import OptionAction as PatientAction

__all__ = ["RULES", "BasicAction", "PatientAction", "ProfileRule"]


@dataclass(frozen=True)
class ProfileRule:
    """One row of Table E.1-1."""

    tag: int
    name: str
    basic: BasicAction
    # The Retain Longitudinal Temporal Information options apply to it.
    temporal: bool
    # The Retain Patient Characteristics option's action, if the option covers it.
    patient_characteristics: PatientAction | None


def _rule(row: Row) -> ProfileRule:
    return ProfileRule(
        tag=row.tag,
        name=row.name,
        basic=row.basic,
        temporal=row.full_dates is not None or row.modified_dates is not None,
        patient_characteristics=row.patient_characteristics,
    )


# Table E.1-1 by tag (single-tag rows only).
RULES: Mapping[int, ProfileRule] = MappingProxyType({row.tag: _rule(row) for row in ROWS})
