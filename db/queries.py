"""Every read and write of the job database, as keyword-only functions.

The listener, the completion watcher, the job runner, the CLI and the admin
REST API all go through here; none of them builds SQL of its own.

Re-run policy for instances that arrive late (documented in the README):

* the study's newest job is still ``received``: the instance joins it and the
  quiet timer restarts;
* it is ``queued`` but not started: it goes back to ``received`` so the whole,
  grown study is analysed once;
* it is running or finished: a new job version is created for the study; the
  old job keeps its result, the newest version is the current one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Insert,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from db.models import (
    TERMINAL_STATES,
    Event,
    EventLevel,
    Instance,
    Job,
    JobState,
    Patient,
    Pseudonym,
    PseudonymKind,
    Result,
    Study,
    utcnow,
)

_Row = TypeVarTuple("_Row")  # the columns a filtered query selects


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


_PATIENTS = cast(Table, Patient.__table__)
_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_JOBS = cast(Table, Job.__table__)
_EVENTS = cast(Table, Event.__table__)


# --- events -----------------------------------------------------------------


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


# --- ingest -----------------------------------------------------------------


@dataclass(frozen=True)
class NewInstance:
    """What the listener knows about an instance it has just placed in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    study_date: str
    path: str
    size_bytes: int
    calling_ae: str


@dataclass(frozen=True)
class RegisteredInstance:
    """Where a new instance landed in the database."""

    instance_id: int
    study_id: int
    job_id: int
    job_version: int


def find_instance(session: Session, *, sop_instance_uid: str) -> Instance | None:
    """The stored instance with this SOP Instance UID, if any."""
    return session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def note_duplicate(
    session: Session, *, instance: Instance, same_bytes: bool, size_bytes: int, calling_ae: str
) -> None:
    """Count a resend of a stored instance; warn when its bytes differ."""
    instance.duplicates_received += 1
    if not same_bytes:
        record_event(
            session,
            kind="instance.duplicate_differs",
            level=EventLevel.WARNING,
            study_id=instance.study_fk,
            message=(
                f"{calling_ae} resent SOP instance {instance.sop_instance_uid} with different "
                "content; the first copy is kept"
            ),
            detail={"stored_size_bytes": instance.size_bytes, "resent_size_bytes": size_bytes},
        )


def _new_pseudonym() -> str:
    return "P-" + secrets.token_hex(5).upper()


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "an INSERT of a single row has a primary key"
    return int(key[0])


def _insert_or_select(connection: Connection, insert_stmt: Insert, query: Select[Any]) -> int:
    """Insert a row and return its id; the id of the row a racing writer inserted first."""
    try:
        with connection.begin_nested():
            return _inserted_id(connection.execute(insert_stmt))
    except IntegrityError:
        return int(connection.execute(query).scalar_one())


# The hot path's statements, built once: SQLAlchemy then only binds parameters.
_TOUCH_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.study_instance_uid == bindparam("study_uid"))
    .values(last_received_at=bindparam("now"), instance_count=_STUDIES.c.instance_count + 1)
    .returning(_STUDIES.c.id)
)
_INSERT_INSTANCE = insert(_INSTANCES)
_LATEST_JOB = (
    select(_JOBS.c.id, _JOBS.c.version, _JOBS.c.state, _JOBS.c.started_at)
    .where(_JOBS.c.study_fk == bindparam("study_id"))
    .order_by(_JOBS.c.version.desc())
    .limit(1)
)


def register_instance(
    connection: Connection, *, new: NewInstance, now: datetime | None = None
) -> RegisteredInstance:
    """Insert an instance, creating its patient, study and job as needed.

    Applies the module's re-run policy when the study already has a job. This
    is the listener's hot path (once per C-STORE), so it takes a bare
    connection and uses Core statements: three or four per instance, no ORM.

    Raises
    ------
    sqlalchemy.exc.IntegrityError
        If the SOP Instance UID is already registered (under another study).
    """
    now = now or utcnow()
    # Touching the study first serialises registrations per study: PostgreSQL holds
    # the row lock until commit (SQLite's write lock, taken at BEGIN, already does).
    touch = {"study_uid": new.study_instance_uid, "now": now}
    study_id = connection.execute(_TOUCH_STUDY, touch).scalar_one_or_none()
    if study_id is None:
        _new_study(connection, new=new, now=now)
        study_id = connection.execute(_TOUCH_STUDY, touch).scalar_one()
    instance = {
        "study_fk": study_id,
        "sop_instance_uid": new.sop_instance_uid,
        "sop_class_uid": new.sop_class_uid,
        "series_instance_uid": new.series_instance_uid,
        "transfer_syntax_uid": new.transfer_syntax_uid,
        "modality": new.modality,
        "path": new.path,
        "size_bytes": new.size_bytes,
        "calling_ae": new.calling_ae,
        "received_at": now,
        "duplicates_received": 0,
    }
    instance_id = _inserted_id(connection.execute(_INSERT_INSTANCE, instance))
    job_id, job_version = _job_for_new_instance(connection, study_id=study_id, now=now)
    return RegisteredInstance(
        instance_id=instance_id, study_id=study_id, job_id=job_id, job_version=job_version
    )


def _new_study(connection: Connection, *, new: NewInstance, now: datetime) -> None:
    """Create the empty study (and its patient on first sight) unless a racing writer did."""
    patient_query = select(_PATIENTS.c.id).where(
        _PATIENTS.c.patient_id == new.patient_id, _PATIENTS.c.issuer == new.issuer_of_patient_id
    )
    patient_id = connection.execute(patient_query).scalar_one_or_none()
    if patient_id is None:
        patient_id = _insert_or_select(
            connection,
            insert(_PATIENTS).values(
                patient_id=new.patient_id,
                issuer=new.issuer_of_patient_id,
                pseudonym=_new_pseudonym(),
                created_at=now,
            ),
            patient_query,
        )
    _insert_or_select(
        connection,
        insert(_STUDIES).values(
            study_instance_uid=new.study_instance_uid,
            patient_fk=patient_id,
            accession_number=new.accession_number,
            study_date=new.study_date,
            calling_ae=new.calling_ae,
            first_received_at=now,
            last_received_at=now,
            instance_count=0,
        ),
        select(_STUDIES.c.id).where(_STUDIES.c.study_instance_uid == new.study_instance_uid),
    )


def _job_for_new_instance(
    connection: Connection, *, study_id: int, now: datetime
) -> tuple[int, int]:
    """Apply the re-run policy; returns the (id, version) of the job the instance belongs to."""
    latest = connection.execute(_LATEST_JOB, {"study_id": study_id}).one_or_none()
    if latest is not None and latest.state == JobState.RECEIVED:
        return int(latest.id), int(latest.version)
    if latest is not None and latest.state == JobState.QUEUED and latest.started_at is None:
        connection.execute(
            update(_JOBS)
            .where(_JOBS.c.id == latest.id)
            .values(state=JobState.RECEIVED, queued_at=None, dispatched_at=None)
        )
        record_event(
            connection,
            kind="job.reopened",
            job_id=latest.id,
            study_id=study_id,
            message="more instances arrived before the job started; waiting for the study again",
        )
        return int(latest.id), int(latest.version)
    version = 1 if latest is None else int(latest.version) + 1
    job_id = _inserted_id(
        connection.execute(
            insert(_JOBS).values(
                study_fk=study_id, version=version, state=JobState.RECEIVED, created_at=now
            )
        )
    )
    message = (
        "study received; job created"
        if latest is None
        else f"instances arrived after job v{latest.version} started; created v{version}"
    )
    record_event(connection, kind="job.created", job_id=job_id, study_id=study_id, message=message)
    return job_id, version


# --- completion and dispatch --------------------------------------------------


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
        )
    return [job.id for job in jobs]


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


def recover_interrupted_jobs(session: Session, *, running_too: bool = True) -> list[int]:
    """At start: running jobs go back to the queue; every queued job is re-dispatched.

    ``running_too=False`` (distributed mode) leaves running jobs to their workers,
    which outlive the node; a job whose worker is gone is caught as stalled.
    """
    running = (
        session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
        if running_too
        else []
    )
    for job in running:
        job.state = JobState.QUEUED
        job.stage = None
        record_event(
            session,
            kind="job.recovered",
            level=EventLevel.WARNING,
            job_id=job.id,
            study_id=job.study_fk,
            message="the node stopped while this job ran; it is queued again",
        )
    session.execute(update(Job).where(Job.state == JobState.QUEUED).values(dispatched_at=None))
    return [job.id for job in running]


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


# --- job lifecycle -------------------------------------------------------------


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
class JobSource:
    """Where a job's study came from: the calling AE and the instances in the spool."""

    study_instance_uid: str
    calling_ae: str
    # (sop uid, sop class, series uid, path relative to the spool), in arrival order
    instances: tuple[tuple[str, str, str, str], ...]


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
            (i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.path)
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


@dataclass(frozen=True)
class Prediction:
    """What the model said about a study, as the results table keeps it."""

    probability: float
    threshold: float
    positive: bool
    risk_stage: int
    bundle_name: str
    bundle_version: str
    synthetic_bundle: bool
    report_text_used: bool
    contributions: dict[str, float]


def save_result(
    session: Session,
    *,
    job_id: int,
    outcome: str,
    detail: dict[str, Any] | None = None,
    prediction: Prediction | None = None,
) -> Result:
    """Record the job's result, replacing the one an earlier attempt may have left."""
    existing = session.scalar(select(Result).where(Result.job_fk == job_id))
    if existing is not None:
        session.delete(existing)
        session.flush()
    values = {} if prediction is None else asdict(prediction)
    result = Result(job_fk=job_id, outcome=outcome, detail=detail, **values)
    session.add(result)
    session.flush()
    return result


def add_result_detail(session: Session, *, job_id: int, **detail: Any) -> None:
    """Add (or replace) keys of the detail of job ``job_id``'s result.

    Raises
    ------
    JobStateError
        If the job has no result yet.
    """
    result = session.scalar(select(Result).where(Result.job_fk == job_id))
    if result is None:
        raise JobStateError(f"job {job_id} has no result to add to")
    result.detail = {**(result.detail or {}), **detail}


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


# --- pseudonym map ------------------------------------------------------------


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


# --- admin queries ------------------------------------------------------------


@dataclass(frozen=True)
class StudyRow:
    """A study as the admin lists it (no patient identifiers, only the pseudonym)."""

    id: int
    patient_pseudonym: str
    calling_ae: str
    study_date: str
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    latest_job_id: int | None
    latest_job_state: str | None


@dataclass(frozen=True)
class JobRow:
    """A job as the admin lists it."""

    id: int
    study_id: int
    version: int
    state: str
    stage: str | None
    attempts: int
    patient_pseudonym: str
    calling_ae: str
    created_at: datetime
    updated_at: datetime
    error: str | None


@dataclass(frozen=True)
class EventRow:
    """One audit-trail entry."""

    id: int
    created_at: datetime
    level: str
    kind: str
    message: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class ResultRow:
    """A job's result: a prediction, or the outcome that explains why there is none."""

    outcome: str
    probability: float | None
    threshold: float | None
    positive: bool | None
    risk_stage: int | None
    bundle_name: str
    bundle_version: str
    synthetic_bundle: bool
    report_text_used: bool
    contributions: dict[str, Any] | None  # percent per model input
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class JobDetail:
    """A job with its result (if any) and its whole audit trail."""

    job: JobRow
    study_instance_uid: str
    result: ResultRow | None
    events: tuple[EventRow, ...]


def _job_row(job: Job) -> JobRow:
    return JobRow(
        id=job.id,
        study_id=job.study_fk,
        version=job.version,
        state=job.state.value,
        stage=job.stage,
        attempts=job.attempts,
        patient_pseudonym=job.study.patient.pseudonym,
        calling_ae=job.study.calling_ae,
        created_at=job.created_at,
        updated_at=job.updated_at,
        error=job.error,
    )


@dataclass(frozen=True)
class AdminFilter:
    """What the admin lists (CLI, API, dashboard) filter by; every field optional.

    ``states`` is the job's state, for studies their newest job's; ``since`` and
    ``until`` bound a job's creation, or a study's reception.
    """

    states: Sequence[JobState] = ()
    since: datetime | None = None
    until: datetime | None = None
    calling_ae: str | None = None
    patient_pseudonym: str | None = None


NO_FILTER = AdminFilter()


def _job_query(query: Select[*_Row], filters: AdminFilter) -> Select[*_Row]:
    query = query.join(Study, Job.study_fk == Study.id).join(Patient)
    if filters.states:
        query = query.where(Job.state.in_(list(filters.states)))
    if filters.since is not None:
        query = query.where(Job.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Job.created_at < filters.until)
    return _sender_and_patient(query, filters)


def _sender_and_patient(query: Select[*_Row], filters: AdminFilter) -> Select[*_Row]:
    if filters.calling_ae:
        query = query.where(Study.calling_ae == filters.calling_ae)
    if filters.patient_pseudonym:
        query = query.where(Patient.pseudonym == filters.patient_pseudonym)
    return query


def list_jobs(
    session: Session, filters: AdminFilter = NO_FILTER, *, limit: int = 100, offset: int = 0
) -> list[JobRow]:
    """Jobs, newest first, filtered by state, creation time, sending AE and pseudonym."""
    query = (
        _job_query(select(Job), filters)
        .options(selectinload(Job.study).selectinload(Study.patient))
        .order_by(Job.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_job_row(job) for job in session.scalars(query)]


def count_jobs(session: Session, filters: AdminFilter = NO_FILTER) -> int:
    """How many jobs :func:`list_jobs` finds with ``filters``, over all pages."""
    return session.scalar(_job_query(select(func.count(Job.id)), filters)) or 0


def get_job(session: Session, *, job_id: int) -> JobRow:
    """Job ``job_id`` as the admin lists it.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    """
    job = find_job(session, job_id)
    return _job_row(job)


def job_detail(session: Session, *, job_id: int) -> JobDetail:
    """One job and its events, oldest first."""
    job = find_job(session, job_id)
    events = tuple(
        EventRow(
            id=e.id,
            created_at=e.created_at,
            level=e.level.value,
            kind=e.kind,
            message=e.message,
            detail=e.detail,
        )
        for e in job.events
    )
    result = None
    if job.result is not None:
        r = job.result
        result = ResultRow(
            outcome=r.outcome,
            probability=r.probability,
            threshold=r.threshold,
            positive=r.positive,
            risk_stage=r.risk_stage,
            bundle_name=r.bundle_name,
            bundle_version=r.bundle_version,
            synthetic_bundle=r.synthetic_bundle,
            report_text_used=r.report_text_used,
            contributions=r.contributions,
            detail=r.detail,
        )
    return JobDetail(
        job=_job_row(job),
        study_instance_uid=job.study.study_instance_uid,
        result=result,
        events=events,
    )


def _study_query(query: Select[*_Row], filters: AdminFilter) -> Select[*_Row]:
    """``query`` over studies joined to their patient and newest job, filtered."""
    latest_version = (
        select(Job.study_fk, func.max(Job.version).label("version"))
        .group_by(Job.study_fk)
        .subquery()
    )
    query = (
        query.select_from(Study)
        .join(Patient)
        .outerjoin(latest_version, latest_version.c.study_fk == Study.id)
        .outerjoin(Job, (Job.study_fk == Study.id) & (Job.version == latest_version.c.version))
    )
    if filters.states:
        query = query.where(Job.state.in_(list(filters.states)))
    if filters.since is not None:
        query = query.where(Study.last_received_at >= filters.since)
    if filters.until is not None:
        query = query.where(Study.first_received_at < filters.until)
    return _sender_and_patient(query, filters)


def list_studies(
    session: Session, filters: AdminFilter = NO_FILTER, *, limit: int = 100, offset: int = 0
) -> list[StudyRow]:
    """Studies, most recently received first, with the state of their newest job."""
    query = (
        _study_query(select(Study, Patient.pseudonym, Job.id, Job.state), filters)
        .order_by(Study.last_received_at.desc(), Study.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        StudyRow(
            id=study.id,
            patient_pseudonym=pseudonym,
            calling_ae=study.calling_ae,
            study_date=study.study_date,
            instance_count=study.instance_count,
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            latest_job_id=job_id,
            latest_job_state=state.value if state is not None else None,
        )
        for study, pseudonym, job_id, state in session.execute(query)
    ]


def count_studies(session: Session, filters: AdminFilter = NO_FILTER) -> int:
    """How many studies :func:`list_studies` finds with ``filters``, over all pages."""
    return session.scalar(_study_query(select(func.count(Study.id)), filters)) or 0


def unfinished_job_count(session: Session) -> int:
    """Jobs not yet in a terminal state."""
    return (
        session.scalar(select(func.count(Job.id)).where(Job.state.not_in(list(TERMINAL_STATES))))
        or 0
    )


# --- dashboard ----------------------------------------------------------------


@dataclass(frozen=True)
class JobSummary:
    """What the dashboard polls and shows beside a JobRow: state, study date, result."""

    job_id: int
    state: str
    stage: str | None
    study_date: str
    outcome: str | None
    probability: float | None
    threshold: float | None
    risk_stage: int | None
    synthetic_bundle: bool


def job_summaries(session: Session, *, job_ids: Sequence[int]) -> dict[int, JobSummary]:
    """The summaries of jobs ``job_ids`` (unknown ids are left out), by job id."""
    rows = session.execute(
        select(Job.id, Job.state, Job.stage, Study.study_date, Result)
        .join(Study)
        .outerjoin(Result)
        .where(Job.id.in_(list(job_ids)))
    )
    return {
        job_id: JobSummary(
            job_id=job_id,
            state=state.value,
            stage=stage,
            study_date=study_date,
            outcome=None if result is None else result.outcome,
            probability=None if result is None else result.probability,
            threshold=None if result is None else result.threshold,
            risk_stage=None if result is None else result.risk_stage,
            synthetic_bundle=result is not None and result.synthetic_bundle,
        )
        for job_id, state, stage, study_date, result in rows
    }
