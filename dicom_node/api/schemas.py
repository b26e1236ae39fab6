"""Response models of the admin API: what the OpenAPI schema promises.

Patients appear by pseudonym only, as in the CLI; no name or patient ID is ever part
of a response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from db.models import EventLevel, ExportState, JobState
from db.outcomes import ImportReport


class Problem(BaseModel):
    """An error: what went wrong, in words."""

    detail: str


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


CheckName = Literal["database", "spool", "model_bundle"]


class Check(BaseModel):
    """One readiness check; a failed one names the kind of error (details go to the log)."""

    name: CheckName
    ok: bool
    error: str | None = None


class Readiness(BaseModel):
    """Readiness: whether the node can take and analyse studies now."""

    status: Literal["ready", "not ready"]
    checks: list[Check]


class Study(BaseModel):
    """A received study with the state of its newest job."""

    id: int
    patient_pseudonym: str
    calling_ae: str
    study_date: str
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    latest_job_id: int | None
    latest_job_state: JobState | None


class Job(BaseModel):
    """One analysis of a study."""

    id: int
    study_id: int
    version: int
    state: JobState
    stage: str | None
    attempts: int
    patient_pseudonym: str
    calling_ae: str
    created_at: datetime
    updated_at: datetime
    error: str | None


class Export(BaseModel):
    """Delivery of one result object to one destination."""

    id: int
    job_id: int
    study_id: int
    destination: str
    sop_instance_uid: str
    state: ExportState
    attempts: int
    last_status: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None


class Page(BaseModel):
    """Paging of a list: ``total`` matches over all pages."""

    total: int
    limit: int
    offset: int


class StudyPage(Page):
    """A page of studies, most recently received first."""

    items: list[Study]


class JobPage(Page):
    """A page of jobs, newest first."""

    items: list[Job]


class ExportPage(Page):
    """A page of exports, newest first."""

    items: list[Export]


class Event(BaseModel):
    """An audit-trail entry of a job."""

    id: int
    created_at: datetime
    level: EventLevel
    kind: str
    message: str
    detail: dict[str, Any] | None


class ReportObject(BaseModel):
    """A DICOM object the job made for the PACS, with where to download it."""

    kind: str  # sr, sc, seg, notice
    sop_instance_uid: str
    href: str


class Result(BaseModel):
    """The model's answer, or the outcome that explains why there is none."""

    outcome: str
    # Not assessed: the scope gate's coded reason, its wording, and the images left out.
    reason: str | None
    reason_text: str | None
    excluded: list[dict[str, str]]
    probability: float | None
    threshold: float | None
    positive: bool | None
    risk_stage: int | None
    contributions: dict[str, float] | None  # percent per model input
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    synthetic_bundle: bool
    clinical_use_label: str | None
    report_text_used: bool
    objects: list[ReportObject]
    heatmaps: list[str]  # links to the heatmap overlay PNGs, in view order


class ShadowAnswer(BaseModel):
    """A shadow bundle's answer: kept in the job database, never sent to the PACS."""

    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    outcome: str
    reason: str | None
    probability: float | None
    threshold: float | None
    positive: bool | None
    risk_stage: int | None
    contributions: dict[str, float] | None
    error: str | None
    created_at: datetime


class JobDetail(BaseModel):
    """A job with its result and its whole event timeline, oldest first."""

    job: Job
    study_instance_uid: str
    result: Result | None
    shadow: list[ShadowAnswer]  # the shadow bundles' answers (none exported)
    events: list[Event]


class RetryOutcome(BaseModel):
    """What a retry did: the job queued again, or its dead exports queued again."""

    job: Job
    action: Literal["job_queued", "exports_queued"]
    exports_queued: int


class InvalidLine(BaseModel):
    """A line of an outcome file that could not be read, and why."""

    line: int
    reason: str


class OutcomeImport(BaseModel):
    """What an outcome import did (db.outcomes), by file line; no identifiers."""

    rows: int
    imported: int
    updated: int
    unchanged: int
    invalid: list[InvalidLine]
    unmatched: list[int]
    ambiguous: list[int]
    duplicates: list[int]
    conflicting: list[int]
    studies_with_outcome: int
    positive: int

    @classmethod
    def of(cls, report: ImportReport, counts: dict[str, int]) -> OutcomeImport:
        """The response for ``report`` and the database's outcome ``counts``."""
        return cls(
            rows=report.rows,
            imported=report.imported,
            updated=report.updated,
            unchanged=report.unchanged,
            invalid=[InvalidLine(line=line, reason=why) for line, why in report.invalid],
            unmatched=report.unmatched,
            ambiguous=report.ambiguous,
            duplicates=report.duplicates,
            conflicting=report.conflicting,
            studies_with_outcome=counts["studies"],
            positive=counts["positive"],
        )


class InstalledBundle(BaseModel):
    """A bundle installed in the node's store, with its role."""

    name: str
    version: str
    sha256: str
    role: Literal["live", "shadow", "off"]
    installed_at: datetime
    changed_at: datetime


class Bundle(BaseModel):
    """The model bundle in use."""

    name: str
    version: str
    created: str
    synthetic: bool
    clinical_use_label: str | None
    intended_use: str
    verified: bool = Field(description="every file matches its sha256 in the manifest")
    problem: str | None = Field(description="why verification failed, when it did")
    metrics: dict[str, dict[str, float]] = Field(
        description="per component (llnm, nodule, thyroid): its best validation metrics"
    )
