"""Export bookkeeping: which result object goes to which destination, and how it went.

One ``ExportAttempt`` row per object and destination. It is ``pending`` until the
destination stores it (``sent``) or the exporter gives up (``dead``); a pending row
waits for ``next_attempt_at``, pushed back by exponential backoff after each failure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple, cast

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.orm import Session

from db.events import record_event
from db.jobs import JobStateError, find_job, retry_job
from db.models import EventLevel, ExportAttempt, ExportState, Job, JobState, utcnow

_Row = TypeVarTuple("_Row")  # the columns a filtered query selects

# A row handed to an exporter is not handed out again for this long, unless marked sooner.
DEFAULT_LEASE_S = 600.0


@dataclass(frozen=True)
class DueExport:
    """A pending export whose time has come; ``path`` is relative to the spool root."""

    id: int
    job_id: int
    destination: str
    sop_instance_uid: str
    path: str
    attempts: int


@dataclass(frozen=True)
class ExportRow:
    """One object and destination as the admin lists it."""

    id: int
    job_id: int
    study_id: int
    destination: str
    sop_instance_uid: str
    path: str
    state: str
    attempts: int
    last_status: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None


def queue_exports(
    session: Session,
    *,
    job_id: int,
    objects: Sequence[tuple[str, str]],
    destinations: Sequence[str],
) -> int:
    """Queue each object for each destination, due now; returns how many rows are pending.

    ``objects`` are (SOP Instance UID, path relative to the spool root). Idempotent: an
    object already sent to a destination is left alone, any other existing row is reset
    to pending with its attempts and error cleared.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    """
    job = find_job(session, job_id)
    if not destinations:
        record_event(
            session,
            kind="export.none",
            level=EventLevel.WARNING,
            job_id=job_id,
            study_id=job.study_fk,
            message=f"no destination configured for calling AE {job.study.calling_ae}",
        )
        return 0
    now = utcnow()
    existing = {
        (row.destination, row.sop_instance_uid): row
        for row in session.scalars(select(ExportAttempt).where(ExportAttempt.job_fk == job_id))
    }
    pending = already_sent = 0
    for destination in destinations:
        for sop_instance_uid, path in objects:
            row = existing.get((destination, sop_instance_uid))
            if row is None:
                row = ExportAttempt(
                    job_fk=job_id, destination=destination, sop_instance_uid=sop_instance_uid
                )
                session.add(row)
                existing[(destination, sop_instance_uid)] = row
            elif row.state == ExportState.SENT:
                already_sent += 1
                continue
            _reset(row, now=now)
            row.path = path
            pending += 1
    record_event(
        session,
        kind="export.queued",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"queued {pending} export(s) of {len(objects)} object(s) "
        f"to {', '.join(destinations)}; {already_sent} already sent",
        detail={
            "objects": len(objects),
            "destinations": list(destinations),
            "queued": pending,
            "already_sent": already_sent,
        },
    )
    return pending


def _reset(row: ExportAttempt, *, now: datetime) -> None:
    row.state = ExportState.PENDING
    row.attempts = 0
    row.error = None
    row.last_status = None
    row.next_attempt_at = now


def due_exports(
    session: Session, *, now: datetime, limit: int, lease_s: float = DEFAULT_LEASE_S
) -> list[DueExport]:
    """Take up to ``limit`` pending exports due at ``now``, oldest due first.

    Taken rows are leased: not due again for ``lease_s`` unless marked sent or failed,
    so a second exporter skips them and an exporter that died mid-send retries later.
    """
    rows = session.scalars(
        select(ExportAttempt)
        .where(ExportAttempt.state == ExportState.PENDING, ExportAttempt.next_attempt_at <= now)
        .order_by(ExportAttempt.next_attempt_at, ExportAttempt.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        row.next_attempt_at = now + timedelta(seconds=lease_s)
    return [
        DueExport(
            id=row.id,
            job_id=row.job_fk,
            destination=row.destination,
            sop_instance_uid=row.sop_instance_uid,
            path=row.path,
            attempts=row.attempts,
        )
        for row in rows
    ]


def release_leases(session: Session, *, now: datetime) -> int:
    """Make every pending export due now; at start-up, this frees the leases a stop left.

    Only one node process sends a spool's exports, so at its start no lease is
    held by anyone; a backoff cut short by a restart costs one early attempt.
    """
    released = session.execute(
        update(ExportAttempt)
        .where(ExportAttempt.state == ExportState.PENDING, ExportAttempt.next_attempt_at > now)
        .values(next_attempt_at=now)
    )
    return int(cast(CursorResult[Any], released).rowcount)


def mark_sent(session: Session, *, statuses: Mapping[int, int]) -> None:
    """Mark exports stored by their destination; ``statuses`` maps export id to DIMSE status.

    Records one ``export.sent`` event per job and destination.
    """
    rows = session.scalars(select(ExportAttempt).where(ExportAttempt.id.in_(list(statuses))))
    batches: dict[tuple[int, str], list[ExportAttempt]] = defaultdict(list)
    for row in rows:
        row.state = ExportState.SENT
        row.attempts += 1
        row.last_status = statuses[row.id]
        row.error = None
        row.next_attempt_at = None
        batches[(row.job_fk, row.destination)].append(row)
    for (job_id, destination), batch in batches.items():
        warnings = sorted({f"0x{r.last_status:04X}" for r in batch if r.last_status})
        note = f" (warning status {', '.join(warnings)})" if warnings else ""
        record_event(
            session,
            kind="export.sent",
            job_id=job_id,
            message=f"sent {len(batch)} object(s) to {destination}{note}",
            detail={"destination": destination, "count": len(batch), "warnings": warnings},
        )


def mark_failed(
    session: Session,
    *,
    export_id: int,
    status: int | None,
    error: str,
    max_attempts: int,
    initial_backoff_s: float,
    max_backoff_s: float,
    now: datetime,
) -> ExportState:
    """Count a failed attempt: pending again after a backoff, or dead after ``max_attempts``.

    Attempt n + 1 waits ``min(initial_backoff_s * 2 ** (n - 1), max_backoff_s)``.
    """
    row = session.get_one(ExportAttempt, export_id)
    row.attempts += 1
    row.last_status = status
    row.error = error
    if row.attempts >= max_attempts:
        _bury(session, row)
    else:
        backoff = min(initial_backoff_s * 2 ** (row.attempts - 1), max_backoff_s)
        row.next_attempt_at = now + timedelta(seconds=backoff)
    return row.state


def mark_dead(session: Session, *, export_id: int, error: str) -> None:
    """Give up on an export at once: the failure is permanent (e.g. its file is gone)."""
    row = session.get_one(ExportAttempt, export_id)
    row.attempts += 1
    row.error = error
    _bury(session, row)


def _bury(session: Session, row: ExportAttempt) -> None:
    row.state = ExportState.DEAD
    row.next_attempt_at = None
    record_event(
        session,
        kind="export.dead",
        level=EventLevel.ERROR,
        job_id=row.job_fk,
        message=f"export to {row.destination} gave up after {row.attempts} attempt(s): {row.error}",
        detail={
            "destination": row.destination,
            "sop_instance_uid": row.sop_instance_uid,
            "attempts": row.attempts,
            "status": row.last_status,
        },
    )


def retry_dead_exports(session: Session, *, job_id: int, requested_by: str) -> int:
    """Queue a job's dead exports again, due now (admin action, audited); returns the count.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    JobStateError
        If the job has no dead exports.
    """
    job = find_job(session, job_id)
    rows = session.scalars(
        select(ExportAttempt).where(
            ExportAttempt.job_fk == job_id, ExportAttempt.state == ExportState.DEAD
        )
    ).all()
    if not rows:
        raise JobStateError(f"job {job_id} has no dead exports")
    now = utcnow()
    for row in rows:
        _reset(row, now=now)
    record_event(
        session,
        kind="export.retry",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"resend of {len(rows)} dead export(s) requested by {requested_by}",
        detail={"actor": requested_by, "count": len(rows)},
    )
    return len(rows)


def retry_job_or_exports(session: Session, *, job_id: int, requested_by: str) -> int:
    """Queue a failed or dead job again, or resend a done job's dead exports.

    Returns the number of exports queued again; 0 when the job itself was queued again.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    JobStateError
        If the job is neither failed, dead, nor done with dead exports.
    """
    if find_job(session, job_id).state == JobState.DONE and _dead_count(session, job_id):
        return retry_dead_exports(session, job_id=job_id, requested_by=requested_by)
    retry_job(session, job_id=job_id, requested_by=requested_by)
    return 0


def _dead_count(session: Session, job_id: int) -> int:
    return (
        session.scalar(
            select(func.count(ExportAttempt.id)).where(
                ExportAttempt.job_fk == job_id, ExportAttempt.state == ExportState.DEAD
            )
        )
        or 0
    )


def _export_query(
    query: Select[*_Row],
    *,
    state: ExportState | None,
    destination: str | None,
    job_id: int | None,
) -> Select[*_Row]:
    query = query.join(Job, ExportAttempt.job_fk == Job.id)
    if state is not None:
        query = query.where(ExportAttempt.state == state)
    if destination is not None:
        query = query.where(ExportAttempt.destination == destination)
    if job_id is not None:
        query = query.where(ExportAttempt.job_fk == job_id)
    return query


def list_exports(
    session: Session,
    *,
    state: ExportState | None = None,
    destination: str | None = None,
    job_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ExportRow]:
    """Exports, newest first, filtered by state, destination and job."""
    query = _export_query(
        select(ExportAttempt, Job.study_fk), state=state, destination=destination, job_id=job_id
    )
    query = query.order_by(ExportAttempt.id.desc()).limit(limit).offset(offset)
    return [
        ExportRow(
            id=row.id,
            job_id=row.job_fk,
            study_id=study_id,
            destination=row.destination,
            sop_instance_uid=row.sop_instance_uid,
            path=row.path,
            state=row.state.value,
            attempts=row.attempts,
            last_status=row.last_status,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            next_attempt_at=row.next_attempt_at,
        )
        for row, study_id in session.execute(query)
    ]


def count_exports(
    session: Session,
    *,
    state: ExportState | None = None,
    destination: str | None = None,
    job_id: int | None = None,
) -> int:
    """How many exports :func:`list_exports` finds with these filters, over all pages."""
    query = _export_query(
        select(func.count(ExportAttempt.id)), state=state, destination=destination, job_id=job_id
    )
    return session.scalar(query) or 0
