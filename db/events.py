"""The audit trail: every event is a row, written in the caller's transaction."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    insert,
)
from sqlalchemy.orm import Session

from db.models import (
    Event,
    EventLevel,
    utcnow,
)

_EVENTS = cast(Table, Event.__table__)


def record_event(
    db: Session | Connection,
    *,
    kind: str,
    message: str,
    level: EventLevel = EventLevel.INFO,
    job_id: int | None = None,
    study_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an entry to the audit trail (in the caller's transaction)."""
    connection = db.connection() if isinstance(db, Session) else db
    connection.execute(
        insert(_EVENTS).values(
            created_at=utcnow(),
            kind=kind,
            message=message,
            level=level,
            job_fk=job_id,
            study_fk=study_id,
            detail=detail,
        )
    )
