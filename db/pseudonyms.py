"""The pseudonym map: what replaced each original identifier of a job's study.

It stays in the job database: never in logs, exports or stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Session

from db.models import (
    Pseudonym,
    PseudonymKind,
    utcnow,
)


@dataclass(frozen=True)
class PseudonymEntry:
    """One original identifier of a job's study and what replaced it in the de-identified copy."""

    kind: PseudonymKind
    original: str
    pseudonym: str


def save_pseudonyms(session: Session, *, job_id: int, entries: Sequence[PseudonymEntry]) -> int:
    """Store a job's pseudonym map, replacing the map of an earlier attempt; returns its size.

    Raises
    ------
    ValueError
        If ``entries`` gives one original of a kind two different pseudonyms.
    """
    unique: dict[tuple[PseudonymKind, str], str] = {}
    for entry in entries:
        key = (entry.kind, entry.original)
        if unique.setdefault(key, entry.pseudonym) != entry.pseudonym:
            raise ValueError(f"two pseudonyms for one {entry.kind.value} of job {job_id}")
    session.execute(delete(Pseudonym).where(Pseudonym.job_fk == job_id))
    now = utcnow()
    if unique:
        session.execute(
            insert(Pseudonym),
            [
                {
                    "job_fk": job_id,
                    "kind": kind,
                    "original": original,
                    "pseudonym": pseudonym,
                    "created_at": now,
                }
                for (kind, original), pseudonym in unique.items()
            ],
        )
    return len(unique)


def pseudonyms_for_job(session: Session, *, job_id: int) -> list[PseudonymEntry]:
    """A job's pseudonym map, in the order it was stored."""
    return [
        PseudonymEntry(kind=row.kind, original=row.original, pseudonym=row.pseudonym)
        for row in session.scalars(
            select(Pseudonym).where(Pseudonym.job_fk == job_id).order_by(Pseudonym.id)
        )
    ]
