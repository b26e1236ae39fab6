"""What the admin lists (CLI, REST API, dashboard): studies, jobs, results, audit trails.

Rows carry the patient's pseudonym, never an identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import (
    Select,
    Subquery,
    func,
    select,
)
from sqlalchemy.orm import Session, selectinload

from db.jobs import find_job
from db.models import (
    TERMINAL_STATES,
    InstalledBundle,
    Job,
    JobState,
    Patient,
    Result,
    ShadowResult,
    Study,
)

_Row = TypeVarTuple("_Row")  # the columns a filtered query selects


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
    outcome: str | None  # the result's outcome once there is one (predicted, not_assessed, ...)
    reason: str | None  # the scope gate's coded reason of a not_assessed result


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
    reason: str | None  # the scope gate's code when the outcome is not_assessed
    probability: float | None
    threshold: float | None
    positive: bool | None
    risk_stage: int | None
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    synthetic_bundle: bool
    report_text_used: bool
    contributions: dict[str, Any] | None  # percent per model input
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class ShadowRow:
    """A shadow bundle's answer for a job (never exported)."""

    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    outcome: str
    reason: str | None
    probability: float | None
    threshold: float | None
    positive: bool | None
    risk_stage: int | None
    contributions: dict[str, Any] | None
    error: str | None  # what a failed shadow bundle raised
    created_at: datetime


@dataclass(frozen=True)
class JobDetail:
    """A job with its result (if any), its shadow answers and its whole audit trail."""

    job: JobRow
    study_instance_uid: str
    result: ResultRow | None
    events: tuple[EventRow, ...]
    shadow: tuple[ShadowRow, ...] = ()


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
        outcome=None if job.result is None else job.result.outcome,
        reason=None if job.result is None else job.result.reason,
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
        .options(selectinload(Job.study).selectinload(Study.patient), selectinload(Job.result))
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
            reason=r.reason,
            probability=r.probability,
            threshold=r.threshold,
            positive=r.positive,
            risk_stage=r.risk_stage,
            bundle_name=r.bundle_name,
            bundle_version=r.bundle_version,
            bundle_sha256=r.bundle_sha256,
            synthetic_bundle=r.synthetic_bundle,
            report_text_used=r.report_text_used,
            contributions=r.contributions,
            detail=r.detail,
        )
    shadow = tuple(
        ShadowRow(
            bundle_name=b.name,
            bundle_version=b.version,
            bundle_sha256=b.sha256,
            outcome=r.outcome,
            reason=r.reason,
            probability=r.probability,
            threshold=r.threshold,
            positive=r.positive,
            risk_stage=r.risk_stage,
            contributions=r.contributions,
            error=(r.detail or {}).get("error"),
            created_at=r.created_at,
        )
        for r, b in session.execute(
            select(ShadowResult, InstalledBundle)
            .join(InstalledBundle, InstalledBundle.id == ShadowResult.bundle_fk)
            .where(ShadowResult.job_fk == job_id)
            .order_by(InstalledBundle.name, InstalledBundle.version)
        ).all()
    )
    return JobDetail(
        job=_job_row(job),
        study_instance_uid=job.study.study_instance_uid,
        result=result,
        events=events,
        shadow=shadow,
    )


def newest_versions() -> Subquery:
    """Each study's newest job version (columns ``study_fk``, ``version``), to join on."""
    return (
        select(Job.study_fk, func.max(Job.version).label("version"))
        .group_by(Job.study_fk)
        .subquery()
    )


def _study_query(query: Select[*_Row], filters: AdminFilter) -> Select[*_Row]:
    """``query`` over studies joined to their patient and newest job, filtered."""
    latest_version = newest_versions()
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


@dataclass(frozen=True)
class JobSummary:
    """What the dashboard polls and shows beside a JobRow: state, study date, result."""

    job_id: int
    state: str
    stage: str | None
    study_date: str
    outcome: str | None
    reason: str | None
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
            reason=None if result is None else result.reason,
            probability=None if result is None else result.probability,
            threshold=None if result is None else result.threshold,
            risk_stage=None if result is None else result.risk_stage,
            synthetic_bundle=result is not None and result.synthetic_bundle,
        )
        for job_id, state, stage, study_date, result in rows
    }
