"""Registration of received instances: the listener's hot path.

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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Insert,
    Select,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import (
    EventLevel,
    Instance,
    Job,
    JobState,
    Patient,
    Study,
    utcnow,
)

_PATIENTS = cast(Table, Patient.__table__)
_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_JOBS = cast(Table, Job.__table__)


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
