"""The job state machine: received -> queued -> running -> done / failed / dead / cancelled.

The completion watcher, the job runner and the admin actions move jobs through
it; each transition is an event in the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import (
    TERMINAL_STATES,
    CompletionRule,
    Event,
    EventLevel,
    Job,
    JobState,
    Study,
    utcnow,
)


class JobNotFoundError(LookupError):
    """No job with that id."""


class JobStateError(ValueError):
    """The job is not in a state that allows the action."""


def find_job(session: Session, job_id: int) -> Job:
    """Job ``job_id``.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return job


def queue_settled_jobs(session: Session, *, settled_before: datetime) -> list[int]:
    """Move ``received`` jobs whose study has been quiet since ``settled_before`` to ``queued``."""
    jobs = session.scalars(
        select(Job)
        .join(Study)
        .where(Job.state == JobState.RECEIVED, Study.last_received_at <= settled_before)
        .order_by(Job.id)
    ).all()
    now = utcnow()
    for job in jobs:
        job.state = JobState.QUEUED
        job.queued_at = now
        record_event(
            session,
            kind="job.queued",
            job_id=job.id,
            study_id=job.study_fk,
            message="study complete (quiet period over); job queued",
            detail={"rule": CompletionRule.QUIET_TIME.value},
        )
    return [job.id for job in jobs]


def mark_released(connection: Connection, *, study_ids: Iterable[int], calling_ae: str) -> None:
    """An association of ``calling_ae`` that stored instances of these studies was released.

    Their ``received`` jobs wait for the completion watcher to ask ``calling_ae``
    how many instances each study has (:func:`take_released_jobs`).
    """
    connection.execute(
        update(Job)
        .where(Job.study_fk.in_(sorted(study_ids)), Job.state == JobState.RECEIVED)
        .values(released_by=calling_ae)
    )


@dataclass(frozen=True)
class ReleasedJob:
    """A received job whose sender may now be asked for the size of its study."""

    job_id: int
    study_instance_uid: str
    released_by: str  # the calling AE to ask


def take_released_jobs(session: Session) -> list[ReleasedJob]:
    """Received jobs marked by :func:`mark_released`; the marks are cleared."""
    rows = session.execute(
        select(Job.id, Study.study_instance_uid, Job.released_by)
        .join(Study)
        .where(Job.state == JobState.RECEIVED, Job.released_by.is_not(None))
        .order_by(Job.id)
    ).all()
    if rows:
        session.execute(
            update(Job).where(Job.id.in_([row.id for row in rows])).values(released_by=None)
        )
    return [ReleasedJob(row.id, row.study_instance_uid, str(row.released_by)) for row in rows]


def queue_counted_job(session: Session, *, job_id: int, expected: int, asked: str) -> bool:
    """Queue received job ``job_id`` if its study holds ``expected`` instances or more.

    ``expected`` is what the sender ``asked`` holds of the study. Returns whether
    the job was queued (event ``job.queued``, rule ``instance_count``).
    """
    row = session.execute(
        select(Job.state, Job.study_fk, Study.instance_count).join(Study).where(Job.id == job_id)
    ).one_or_none()
    if row is None or row.state != JobState.RECEIVED or row.instance_count < expected:
        return False
    queued = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RECEIVED)
            .values(state=JobState.QUEUED, queued_at=utcnow(), released_by=None)
        ),
    ).rowcount
    if not queued:
        return False
    record_event(
        session,
        kind="job.queued",
        job_id=job_id,
        study_id=row.study_fk,
        message=(
            f"study complete ({asked} holds {expected} instances, the node "
            f"{row.instance_count}); job queued"
        ),
        detail={
            "rule": CompletionRule.INSTANCE_COUNT.value,
            "asked": asked,
            "expected": expected,
            "held": row.instance_count,
        },
    )
    return True


def note_count_unknown(session: Session, *, job_id: int, asked: str, reason: str) -> None:
    """Record that ``asked`` could not say how large job ``job_id``'s study is."""
    study_id = session.scalar(select(Job.study_fk).where(Job.id == job_id))
    record_event(
        session,
        kind="completion.count_unknown",
        level=EventLevel.WARNING,
        job_id=job_id,
        study_id=study_id,
        message=f"{asked} did not say how many instances the study has ({reason}); "
        "it completes after the quiet time",
        detail={"asked": asked, "reason": reason},
    )


def take_dispatchable_jobs(session: Session, *, now: datetime | None = None) -> list[int]:
    """Queued jobs not yet handed to an executor (and due); marks them dispatched."""
    now = now or utcnow()
    jobs = session.scalars(
        select(Job)
        .where(
            Job.state == JobState.QUEUED,
            Job.dispatched_at.is_(None),
            (Job.not_before.is_(None)) | (Job.not_before <= now),
        )
        .order_by(Job.id)
    ).all()
    for job in jobs:
        job.dispatched_at = now
    return [job.id for job in jobs]


# A job the node stopped under this many times is given up (it may be what stops the node).
MAX_RECOVERIES = 3


def recover_interrupted_jobs(session: Session, *, running_too: bool = True) -> list[int]:
    """At start: running jobs go back to the queue; every queued job is re-dispatched.

    The interrupted attempt is not counted: a node stopped by kill -9 or a power
    cut does not use up a job's retries. A job that was running at the last
    :data:`MAX_RECOVERIES` stops is ``dead`` instead (event ``job.dead``), so a
    study that crashes the node cannot crash it forever. ``running_too=False``
    (distributed mode) leaves running jobs to their workers, which outlive the
    node; a job whose worker is gone is caught as stalled. Returns the re-queued jobs.
    """
    running = (
        session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
        if running_too
        else []
    )
    requeued = []
    for job in running:
        earlier = session.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.job_fk == job.id, Event.kind == "job.recovered")
        )
        stops = 1 + (earlier or 0)
        if stops >= MAX_RECOVERIES:
            job.state = JobState.DEAD
            job.error = f"{job.stage}: the node stopped {stops} times while this job ran"
            job.finished_at = utcnow()
            record_event(
                session,
                kind="job.dead",
                level=EventLevel.ERROR,
                job_id=job.id,
                study_id=job.study_fk,
                message=f"given up: the node stopped {stops} times while this job ran",
                detail={"stage": job.stage, "stops": stops},
            )
            continue
        job.state = JobState.QUEUED
        job.stage = None
        job.attempts = max(0, job.attempts - 1)
        record_event(
            session,
            kind="job.recovered",
            level=EventLevel.WARNING,
            job_id=job.id,
            study_id=job.study_fk,
            message="the node stopped while this job ran; it is queued again (attempt not counted)",
        )
        requeued.append(job.id)
    session.execute(update(Job).where(Job.state == JobState.QUEUED).values(dispatched_at=None))
    return requeued


def release_claim(session: Session, *, job_id: int, reason: str) -> None:
    """Hand a claimed job back to the queue, not counting the attempt (it never started)."""
    job = session.get_one(Job, job_id)
    job.state = JobState.QUEUED
    job.attempts = max(0, job.attempts - 1)
    job.dispatched_at = None
    record_event(
        session,
        kind="job.dispatch_failed",
        level=EventLevel.WARNING,
        job_id=job_id,
        study_id=job.study_fk,
        message=f"could not hand the job to the workers ({reason}); it stays queued",
    )


def stalled_jobs(session: Session, *, stalled_before: datetime) -> list[tuple[int, str]]:
    """Running jobs without progress since ``stalled_before``: (job id, stage)."""
    rows = session.execute(
        select(Job.id, Job.stage)
        .where(Job.state == JobState.RUNNING, Job.updated_at < stalled_before)
        .order_by(Job.id)
    ).all()
    return [(job_id, stage or "start") for job_id, stage in rows]


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now owns, with what its first stage needs."""

    job_id: int
    study_id: int
    attempt: int


def claim_job(session: Session, *, job_id: int) -> ClaimedJob | None:
    """Atomically take a queued job; ``None`` if someone else did or it is not queued."""
    now = utcnow()
    taken = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
                error=None,
            )
        ),
    ).rowcount
    if not taken:
        return None
    job = session.get_one(Job, job_id)
    session.refresh(job)
    return ClaimedJob(job_id=job.id, study_id=job.study_fk, attempt=job.attempts)


def running_attempt(session: Session, *, job_id: int) -> int | None:
    """The attempt number of job ``job_id`` if it is running, else None."""
    job = session.get(Job, job_id)
    return job.attempts if job is not None and job.state == JobState.RUNNING else None


@dataclass(frozen=True)
class StoredInstance:
    """One instance of a job's study as the database records it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    relative_path: str  # relative to the spool root


@dataclass(frozen=True)
class JobSource:
    """Where a job's study came from: the calling AE and the instances in the spool."""

    study_instance_uid: str
    calling_ae: str
    instances: tuple[StoredInstance, ...]  # in arrival order


def job_source(session: Session, *, job_id: int) -> JobSource:
    """The calling AE and original instances of job ``job_id``'s study.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    """
    job = find_job(session, job_id)
    study = job.study
    return JobSource(
        study_instance_uid=study.study_instance_uid,
        calling_ae=study.calling_ae,
        instances=tuple(
            StoredInstance(
                sop_instance_uid=i.sop_instance_uid,
                sop_class_uid=i.sop_class_uid,
                series_instance_uid=i.series_instance_uid,
                relative_path=i.path,
            )
            for i in study.instances
        ),
    )


def enter_stage(session: Session, *, job_id: int, stage: str) -> None:
    """Record that a running job started ``stage``."""
    job = session.get_one(Job, job_id)
    job.stage = stage
    job.updated_at = utcnow()  # progress, also when a stage runs again after a worker was lost
    record_event(
        session,
        kind="stage.started",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"{stage} started",
        detail={"stage": stage, "attempt": job.attempts},
    )


def complete_stage(
    session: Session, *, job_id: int, stage: str, seconds: float, summary: dict[str, Any]
) -> None:
    """Record a finished stage with its duration and output summary."""
    job = session.get_one(Job, job_id)
    record_event(
        session,
        kind="stage.done",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"{stage} done in {seconds:.2f} s",
        detail={"stage": stage, "seconds": round(seconds, 4), "summary": summary},
    )


def finish_job(session: Session, *, job_id: int, outcome: str | None = None) -> None:
    """Mark a job done; ``outcome`` names an early conclusion such as no nodule found."""
    job = session.get_one(Job, job_id)
    job.state = JobState.DONE
    job.stage = None
    job.finished_at = utcnow()
    record_event(
        session,
        kind="job.done",
        job_id=job_id,
        study_id=job.study_fk,
        message="job done" if outcome is None else f"job done: {outcome}",
        detail=None if outcome is None else {"outcome": outcome},
    )


def fail_job(
    session: Session, *, job_id: int, stage: str, error: str, max_attempts: int, backoff_s: float
) -> JobState:
    """Record a stage failure.

    ``max_attempts == 0`` marks a permanent failure (bad input): ``failed``.
    Otherwise the job is queued again after an exponential backoff, or
    ``dead`` once it used up ``max_attempts``.
    """
    job = session.get_one(Job, job_id)
    job.error = f"{stage}: {error}"
    if max_attempts == 0:
        job.state = JobState.FAILED
    elif job.attempts >= max_attempts:
        job.state = JobState.DEAD
    else:
        job.state = JobState.QUEUED
        job.dispatched_at = None
        job.not_before = utcnow() + timedelta(seconds=backoff_s * 2 ** (job.attempts - 1))
    if job.state != JobState.QUEUED:
        job.finished_at = utcnow()
    retry = (
        f"; retry {job.attempts + 1}/{max_attempts} queued" if job.state == JobState.QUEUED else ""
    )
    record_event(
        session,
        kind=f"job.{job.state.value}" if job.state != JobState.QUEUED else "job.retry_scheduled",
        level=EventLevel.ERROR,
        job_id=job_id,
        study_id=job.study_fk,
        message=f"{stage} failed: {error}{retry}",
        detail={"stage": stage, "attempt": job.attempts},
    )
    return job.state


def retry_job(session: Session, *, job_id: int, requested_by: str) -> Job:
    """Queue a failed or dead job again (admin action, audited)."""
    job = find_job(session, job_id)
    if job.state not in (JobState.FAILED, JobState.DEAD):
        raise JobStateError(f"job {job_id} is {job.state.value}; only failed or dead jobs retry")
    job.state = JobState.QUEUED
    job.attempts = 0
    job.error = None
    job.stage = None
    job.finished_at = None
    job.dispatched_at = None
    job.not_before = None
    job.queued_at = utcnow()
    record_event(
        session,
        kind="job.retry_requested",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"retry requested by {requested_by}",
        detail={"actor": requested_by},
    )
    return job


def cancel_job(session: Session, *, job_id: int, requested_by: str) -> Job:
    """Stop a received, queued or running job (admin action, audited).

    A running job ends before its next stage; what its current stage makes is dropped.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    JobStateError
        If the job already ended.
    """
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    if job.state in TERMINAL_STATES:
        raise JobStateError(f"job {job_id} is {job.state.value}; it cannot be cancelled")
    was = job.state.value
    job.state = JobState.CANCELLED
    job.stage = None
    job.dispatched_at = None
    job.finished_at = utcnow()
    record_event(
        session,
        kind="job.cancelled",
        job_id=job_id,
        study_id=job.study_fk,
        message=f"cancelled by {requested_by} (was {was})",
        detail={"actor": requested_by, "was": was},
    )
    return job


def job_is_running(session: Session, *, job_id: int) -> bool:
    """Whether job ``job_id`` is running; locks its row so a cancel waits for this transaction."""
    state = session.scalar(select(Job.state).where(Job.id == job_id).with_for_update())
    return state == JobState.RUNNING
