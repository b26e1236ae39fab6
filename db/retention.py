"""What the retention rules may remove: studies and jobs whose results were delivered.

A study's original files may go once every job of the study has ended and none
of its result objects is still waiting to be sent, and its newest job ended
before the cut-off; a job's working folder may go on the same terms for that
job alone. The caller removes the files (:mod:`dicom_node.retention`); the rows
stay, so the audit trail, the results and the pseudonym map remain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from db.models import TERMINAL_STATES, ExportAttempt, ExportState, Instance, Job, Study


@dataclass(frozen=True)
class DeliveredStudy:
    """A study whose results were delivered: its instance files, relative to the spool."""

    study_id: int
    paths: tuple[str, ...]


def _delivered(job: type[Job]) -> ColumnElement[bool]:
    """SQL: ``job`` has ended and none of its exports is pending."""
    pending = exists().where(
        ExportAttempt.job_fk == job.id, ExportAttempt.state == ExportState.PENDING
    )
    return job.state.in_(TERMINAL_STATES) & ~pending


def delivered_jobs(session: Session, *, ended_before: datetime) -> list[int]:
    """Jobs that ended before ``ended_before`` with nothing left to send."""
    query = (
        select(Job.id)
        .where(_delivered(Job), Job.finished_at.is_not(None), Job.finished_at < ended_before)
        .order_by(Job.id)
    )
    return list(session.scalars(query))


def delivered_studies(session: Session, *, ended_before: datetime) -> list[DeliveredStudy]:
    """Studies whose every job is delivered and whose newest ended before ``ended_before``."""
    undelivered = exists().where(Job.study_fk == Study.id, ~_delivered(Job))
    newest_end = select(func.max(Job.finished_at)).where(Job.study_fk == Study.id).scalar_subquery()
    studies = session.scalars(
        select(Study.id)
        .where(~undelivered, exists().where(Job.study_fk == Study.id), newest_end < ended_before)
        .order_by(Study.id)
    ).all()
    paths: dict[int, list[str]] = {study_id: [] for study_id in studies}
    rows = session.execute(
        select(Instance.study_fk, Instance.path)
        .where(Instance.study_fk.in_(studies))
        .order_by(Instance.id)
    )
    for study_id, path in rows:
        paths[study_id].append(path)
    return [DeliveredStudy(study_id, tuple(found)) for study_id, found in paths.items()]
