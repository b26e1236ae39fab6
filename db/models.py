"""The job database schema (SQLAlchemy 2 typed ORM).

A patient has studies; a study has instances (the files in the spool) and jobs
(one per analysis run, numbered by ``version``); a job has events (its audit
trail), at most one result, its export attempts and the pseudonym map of its
de-identified copy. Events with no job record what happened at the listener
(refusals, quarantines). The installed model bundles each have a role (one live,
others shadow or off); a shadow bundle's answer for a job is a shadow result.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID_LENGTH = 64


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC where the backend (SQLite) dropped the zone."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobState(enum.StrEnum):
    """Where a job is; ``RUNNING`` jobs also name their stage."""

    RECEIVED = "received"  # instances still arriving
    QUEUED = "queued"  # study settled, waiting for a worker
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # the input cannot be analysed (permanent)
    DEAD = "dead"  # gave up after the configured attempts
    CANCELLED = "cancelled"  # an admin stopped it before it finished


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


class CompletionRule(enum.StrEnum):
    """What made a study complete, and its job ``queued`` (event ``job.queued``)."""

    INSTANCE_COUNT = "instance_count"  # the node holds as many instances as the sender has
    QUIET_TIME = "quiet_time"  # no instance arrived for completion.quiet_seconds


class EventLevel(enum.StrEnum):
    """Severity of an event."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class PseudonymKind(enum.StrEnum):
    """What an entry of a job's pseudonym map replaces."""

    UID = "uid"
    PATIENT_ID = "patient_id"
    ACCESSION_NUMBER = "accession_number"
    # Original: the patient ID; pseudonym: the shift in days applied to the patient's dates.
    DATE_OFFSET = "date_offset"


class ExportState(enum.StrEnum):
    """Delivery state of one object to one destination."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class BundleRole(enum.StrEnum):
    """What the node does with an installed bundle."""

    LIVE = "live"  # its results go to the PACS (at most one bundle)
    SHADOW = "shadow"  # computed and kept in the job database, never exported
    OFF = "off"  # installed, not run


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(
        cls,
        name=cls.__name__.lower(),
        values_callable=lambda members: [m.value for m in members],
        native_enum=False,
        length=16,
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base of the job database."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Patient(Base):
    """A patient as the PACS knows them, and the pseudonym the node shows instead."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A study as received: one row per Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), index=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    instance_count: Mapped[int] = mapped_column(default=0)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.version")


class Instance(Base):
    """One stored SOP instance: a file in the spool, byte for byte as received."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str] = mapped_column(String(16), default="")
    # Relative to the spool folder.
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # How often the same SOP Instance UID was sent again (and not stored again).
    duplicates_received: Mapped[int] = mapped_column(default=0)

    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    """One analysis of a study; a study that grows after its job started gets a new version."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_fk", "version", name="uq_jobs_study_version"),
        Index("ix_jobs_state_updated", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(default=1)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.RECEIVED)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set when handed to an executor; cleared when the job must be handed over again.
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    # A retry waits until then.
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    # The calling AE of a released association that stored instances of the study, when
    # the node may ask it for the study's size; cleared by the completion watcher as it asks.
    released_by: Mapped[str | None] = mapped_column(String(16), default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    study: Mapped[Study] = relationship(back_populates="jobs")
    events: Mapped[list[Event]] = relationship(back_populates="job", order_by="Event.id")
    result: Mapped[Result | None] = relationship(back_populates="job")
    exports: Mapped[list[ExportAttempt]] = relationship(
        back_populates="job", order_by="ExportAttempt.id"
    )


class Event(Base):
    """An audit-trail entry of a job, a study, or the listener itself."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True, default=None)
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True, default=None)
    level: Mapped[EventLevel] = mapped_column(_enum(EventLevel), default=EventLevel.INFO)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    job: Mapped[Job | None] = relationship(back_populates="events")


class AnswerColumns:
    """The columns of a bundle's answer for a job, shared by live and shadow results."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    probability: Mapped[float | None] = mapped_column(Float, default=None)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    positive: Mapped[bool | None] = mapped_column(default=None)
    risk_stage: Mapped[int | None] = mapped_column(Integer, default=None)
    # Why there is no probability (e.g. no nodule found), when there is none.
    outcome: Mapped[str] = mapped_column(String(32), default="predicted")
    report_text_used: Mapped[bool] = mapped_column(default=False)
    contributions: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class Result(AnswerColumns, Base):
    """The model's answer for one job."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # The scope gate's coded reason when the outcome is not_assessed (imaging.scope_reasons).
    reason: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    bundle_name: Mapped[str] = mapped_column(String(128), default="")
    bundle_version: Mapped[str] = mapped_column(String(32), default="")
    # Of the bundle's manifest (models.bundle.bundle_digest); "" for results made before.
    bundle_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    synthetic_bundle: Mapped[bool] = mapped_column(default=False)

    job: Mapped[Job] = relationship(back_populates="result")


class InstalledBundle(Base):
    """A sealed model bundle copied into the node's bundle store (db.bundles)."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundles_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    # Of its manifest (models.bundle.bundle_digest): a content hash of the whole bundle.
    sha256: Mapped[str] = mapped_column(String(64))
    # Absolute path of the installed copy.
    path: Mapped[str] = mapped_column(Text)
    role: Mapped[BundleRole] = mapped_column(
        _enum(BundleRole), default=BundleRole.SHADOW, index=True
    )
    installed_at: Mapped[datetime] = mapped_column(default=utcnow)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShadowResult(AnswerColumns, Base):
    """A shadow bundle's answer for a job: kept here, never exported."""

    __tablename__ = "shadow_results"
    __table_args__ = (UniqueConstraint("job_fk", "bundle_fk", name="uq_shadow_results_job_bundle"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    bundle_fk: Mapped[int] = mapped_column(ForeignKey("bundles.id"), index=True)
    reason: Mapped[str | None] = mapped_column(String(32), default=None)

    bundle: Mapped[InstalledBundle] = relationship()


class Outcome(Base):
    """A study's pathology outcome as the site imported it (db.outcomes); no identifier."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    llnm: Mapped[bool]
    nodal_stage: Mapped[int | None] = mapped_column(Integer, default=None)
    outcome_date: Mapped[str] = mapped_column(String(8), default="")  # YYYYMMDD or ""
    source: Mapped[str] = mapped_column(String(64), default="")
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)
    imported_by: Mapped[str] = mapped_column(String(64))


class ExportAttempt(Base):
    """Delivery of one result object to one destination, with its retry bookkeeping."""

    __tablename__ = "export_attempts"
    __table_args__ = (
        UniqueConstraint(
            "job_fk", "destination", "sop_instance_uid", name="uq_export_job_dest_sop"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[ExportState] = mapped_column(_enum(ExportState), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="exports")


class Pseudonym(Base):
    """One entry of a job's pseudonym map: an original identifier and its replacement.

    The map exists only here; the de-identified working copy and everything
    downstream carry the pseudonyms alone.
    """

    __tablename__ = "pseudonyms"
    __table_args__ = (
        UniqueConstraint("job_fk", "kind", "original", name="uq_pseudonyms_job_kind_original"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[PseudonymKind] = mapped_column(_enum(PseudonymKind))
    original: Mapped[str] = mapped_column(String(128))
    pseudonym: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
