"""Header cleaning: Table E.1-1 (:mod:`.confidentiality_profile`) and the safety nets.

How the profile's actions and this node's extra rules are applied is described
in :mod:`pipeline.deidentify` (Attributes, Beyond the table).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from db.models import PseudonymKind
from pipeline.deidentify.confidentiality_profile import RULES, BasicAction, ProfileRule
from pipeline.deidentify.options import DeidentificationOptions, LongitudinalDates
from pipeline.deidentify.pseudonyms import Pseudonymizer
from pipeline.deidentify.values import parse_da, text_values

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


class HeaderCleaner:
    """Applies Table E.1-1 (and the safety nets) to a dataset, building a new one."""

    def __init__(
        self,
        *,
        options: DeidentificationOptions,
        pseudonyms: Pseudonymizer,
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
            identifiers.search(text) for text in text_values(value)
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
        values = list(text_values(element.value))
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
        for value in text_values(element.value):
            day = parse_da(value[:8])
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
