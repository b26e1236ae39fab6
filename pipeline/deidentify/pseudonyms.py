"""Pseudonyms: ``2.25`` UIDs, dummy Patient IDs and Accession Numbers, date offsets.

Every replacement is HMAC-SHA256 of the original under one salt, so the same
original gets the same pseudonym throughout a run (or every run, with a site
secret); every pair made is kept for the pseudonym map.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from db.models import PseudonymKind
from db.pseudonyms import PseudonymEntry


class Pseudonymizer:
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
