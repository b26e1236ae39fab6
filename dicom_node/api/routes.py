"""The JSON API under /api/v1 (token required) and the health probes.

Route functions only translate: HTTP parameters in, :mod:`db` query results out as
:mod:`dicom_node.api.schemas` models. Unknown jobs are 404, actions a job's state
does not allow are 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, UploadFile, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from db import exports, jobs, listings, outcomes
from db.models import ExportState, JobState
from dicom_node.api import files, health, schemas
from dicom_node.api.auth import Caller, require_caller
from dicom_node.api.bundle import bundle_in_use, bundle_summary, installed
from models.bundle import NOT_FOR_CLINICAL_USE, BundleError
from pipeline.spool import SpoolLayout

PREFIX = "/api/v1"
MAX_OUTCOME_FILE = 16 * 1024 * 1024  # bytes of an outcome CSV
MAX_ID = 2**31 - 1  # ids and offsets beyond any the database holds are refused, not overflowed
_PRINTABLE = r"^[ -~]+$"  # AE titles and pseudonyms: printable ASCII

router = APIRouter()
api = APIRouter(
    prefix=PREFIX,
    dependencies=[Depends(require_caller)],
    responses={status.HTTP_401_UNAUTHORIZED: {"model": schemas.Problem}},
)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": schemas.Problem}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    status.HTTP_409_CONFLICT: {"model": schemas.Problem},
}

CallerDep = Annotated[Caller, Depends(require_caller)]
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Items skipped.")]
States = Annotated[list[JobState] | None, Query(description="Job state (repeatable).")]
Since = Annotated[datetime | None, Query(description="From this ISO date-time (UTC if naive).")]
Until = Annotated[datetime | None, Query(description="Before this ISO date-time (UTC if naive).")]
Ae = Annotated[
    str | None, Query(max_length=16, pattern=_PRINTABLE, description="Sending (calling) AE title.")
]
Patient = Annotated[
    str | None, Query(max_length=32, pattern=_PRINTABLE, description="Patient pseudonym.")
]


@contextmanager
def _session(request: Request) -> Iterator[Session]:
    """A database session that maps unknown jobs to 404 and state conflicts to 409."""
    try:
        with request.app.state.database.session() as session:
            yield session
    except jobs.JobNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except jobs.JobStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _utc(value: datetime | None, name: str) -> datetime | None:
    """``value`` in UTC (naive means UTC); 422 when it cannot be expressed in UTC."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name} is out of range"
        ) from exc


def _filters(
    state: States = None,
    since: Since = None,
    until: Until = None,
    ae: Ae = None,
    patient: Patient = None,
) -> listings.AdminFilter:
    """The list filters of a request (a dependency: the same query parameters everywhere)."""
    return listings.AdminFilter(
        states=state or (),
        since=_utc(since, "since"),
        until=_utc(until, "until"),
        calling_ae=ae,
        patient_pseudonym=patient,
    )


Filters = Annotated[listings.AdminFilter, Depends(_filters)]


@api.get("/studies", tags=["studies"])
def list_studies(
    request: Request, filters: Filters, limit: Limit = 50, offset: Offset = 0
) -> schemas.StudyPage:
    """Received studies, most recently received first; ``state`` filters by the newest job."""
    with _session(request) as session:
        total = listings.count_studies(session, filters)
        rows = listings.list_studies(session, filters, limit=limit, offset=offset)
    items = [schemas.Study.model_validate(row, from_attributes=True) for row in rows]
    return schemas.StudyPage(total=total, limit=limit, offset=offset, items=items)


@api.get("/jobs", tags=["jobs"])
def list_jobs(
    request: Request, filters: Filters, limit: Limit = 50, offset: Offset = 0
) -> schemas.JobPage:
    """Jobs, newest first, filtered by state, creation time, sending AE and pseudonym."""
    with _session(request) as session:
        total = listings.count_jobs(session, filters)
        rows = listings.list_jobs(session, filters, limit=limit, offset=offset)
    items = [schemas.Job.model_validate(row, from_attributes=True) for row in rows]
    return schemas.JobPage(total=total, limit=limit, offset=offset, items=items)


def _job_link(job_id: int, tail: str) -> str:
    return f"{PREFIX}/jobs/{job_id}/{tail}"


def _result(job_id: int, result: listings.ResultRow, spool: SpoolLayout) -> schemas.Result:
    objects = [
        schemas.ReportObject(
            kind=kind, sop_instance_uid=uid, href=_job_link(job_id, f"objects/{uid}")
        )
        for kind, uid, _ in files.listed_objects(result)
    ]
    heatmaps = [h.path for h in files.heatmaps(spool, job_id, result)]
    detail = result.detail or {}
    return schemas.Result(
        outcome=result.outcome,
        reason=result.reason,
        reason_text=detail.get("text") if result.reason is not None else None,
        excluded=list(detail.get("excluded", [])),
        probability=result.probability,
        threshold=result.threshold,
        positive=result.positive,
        risk_stage=result.risk_stage,
        contributions=result.contributions,
        bundle_name=result.bundle_name,
        bundle_version=result.bundle_version,
        bundle_sha256=result.bundle_sha256,
        synthetic_bundle=result.synthetic_bundle,
        clinical_use_label=NOT_FOR_CLINICAL_USE if result.synthetic_bundle else None,
        report_text_used=result.report_text_used,
        objects=objects,
        heatmaps=[_job_link(job_id, f"heatmaps/{n}") for n in range(1, len(heatmaps) + 1)],
    )


@api.get("/jobs/{job_id}", tags=["jobs"], responses=_NOT_FOUND)
def get_job(request: Request, job_id: JobId) -> schemas.JobDetail:
    """One job: its result (with links to its report objects and heatmaps) and timeline."""
    with _session(request) as session:
        detail = listings.job_detail(session, job_id=job_id)
    result = detail.result
    return schemas.JobDetail(
        job=schemas.Job.model_validate(detail.job, from_attributes=True),
        study_instance_uid=detail.study_instance_uid,
        result=None if result is None else _result(job_id, result, request.app.state.spool),
        shadow=[
            schemas.ShadowAnswer.model_validate(a, from_attributes=True) for a in detail.shadow
        ],
        events=[schemas.Event.model_validate(e, from_attributes=True) for e in detail.events],
    )


def _result_of(request: Request, job_id: int) -> listings.ResultRow | None:
    with _session(request) as session:
        return listings.job_detail(session, job_id=job_id).result


def _file_responses(description: str, media_type: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route that serves one file of ``media_type``, or 404."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        **_NOT_FOUND,
        status.HTTP_200_OK: {"description": description, "content": {media_type: binary}},
    }


@api.get(
    "/jobs/{job_id}/objects/{sop_instance_uid}",
    tags=["jobs"],
    response_class=FileResponse,
    responses=_file_responses("The DICOM file, as sent to the PACS.", "application/dicom"),
)
def get_object(
    request: Request,
    job_id: JobId,
    sop_instance_uid: Annotated[str, PathParam(max_length=64, pattern=r"^[0-9.]+$")],
) -> FileResponse:
    """A report object the job made (SR, heatmap SC, SEG); only those its result lists."""
    path = files.object_path(request.app.state.spool, _result_of(request, job_id), sop_instance_uid)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such object of this job")
    return FileResponse(path, media_type="application/dicom", filename=f"{sop_instance_uid}.dcm")


@api.get(
    "/jobs/{job_id}/heatmaps/{n}",
    tags=["jobs"],
    response_class=FileResponse,
    responses=_file_responses("The heatmap overlay of view n (from 1), as PNG.", "image/png"),
)
def get_heatmap(
    request: Request, job_id: JobId, n: Annotated[int, PathParam(ge=1, le=64)]
) -> FileResponse:
    """The heatmap overlay PNG of the job's n-th view."""
    found = files.heatmaps(request.app.state.spool, job_id, _result_of(request, job_id))
    if n > len(found):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no heatmap {n}")
    return FileResponse(found[n - 1].path, media_type="image/png")


@api.post("/jobs/{job_id}/retry", tags=["jobs"], responses=_CONFLICT)
def retry_job(request: Request, job_id: JobId, caller: CallerDep) -> schemas.RetryOutcome:
    """Queue a failed or dead job again, or resend a done job's dead exports (audited)."""
    with _session(request) as session:
        resent = exports.retry_job_or_exports(session, job_id=job_id, requested_by=caller.name)
        job = listings.get_job(session, job_id=job_id)
    return schemas.RetryOutcome(
        job=schemas.Job.model_validate(job, from_attributes=True),
        action="exports_queued" if resent else "job_queued",
        exports_queued=resent,
    )


def read_outcome_file(upload: UploadFile) -> str:
    """The uploaded CSV as text; 413 when too large, 400 when not UTF-8."""
    data = upload.file.read(MAX_OUTCOME_FILE + 1)
    if len(data) > MAX_OUTCOME_FILE:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "the outcome file is too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the outcome file is not UTF-8") from exc


def store_outcomes(request: Request, text: str, *, imported_by: str) -> schemas.OutcomeImport:
    """Import ``text`` (audited under ``imported_by``); 400 when it is not an outcome file."""
    try:
        with _session(request) as session:
            report = outcomes.import_outcomes(session, text, imported_by=imported_by)
            counts = outcomes.outcome_counts(session)
    except outcomes.OutcomeFileError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    return schemas.OutcomeImport.of(report, counts)


@api.post(
    "/outcomes",
    tags=["outcomes"],
    responses={status.HTTP_400_BAD_REQUEST: {"model": schemas.Problem}},
)
def import_outcomes(request: Request, file: UploadFile, caller: CallerDep) -> schemas.OutcomeImport:
    """Import pathology outcomes from a CSV upload (idempotent; audited with the token's name).

    Columns: ``accession_number`` or ``study_instance_uid``, ``llnm`` (yes/no), optional
    ``nodal_stage``, ``date``, ``source``. Lines not applied are listed by number.
    """
    return store_outcomes(request, read_outcome_file(file), imported_by=f"{caller.name} (api)")


@api.post("/jobs/{job_id}/cancel", tags=["jobs"], responses=_CONFLICT)
def cancel_job(request: Request, job_id: JobId, caller: CallerDep) -> schemas.Job:
    """Cancel a received, queued or running job (audited); a running one stops after its stage."""
    with _session(request) as session:
        jobs.cancel_job(session, job_id=job_id, requested_by=caller.name)
        job = listings.get_job(session, job_id=job_id)
    return schemas.Job.model_validate(job, from_attributes=True)


@api.get("/exports", tags=["exports"])
def list_exports(
    request: Request,
    state: Annotated[ExportState | None, Query(description="Export state.")] = None,
    destination: Annotated[
        str | None, Query(max_length=128, pattern=_PRINTABLE, description="Destination name.")
    ] = None,
    job: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Job id.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> schemas.ExportPage:
    """Exports of result objects to destinations, newest first."""
    filters: dict[str, Any] = {"state": state, "destination": destination, "job_id": job}
    with _session(request) as session:
        total = exports.count_exports(session, **filters)
        rows = exports.list_exports(session, limit=limit, offset=offset, **filters)
    items = [schemas.Export.model_validate(row, from_attributes=True) for row in rows]
    return schemas.ExportPage(total=total, limit=limit, offset=offset, items=items)


@api.get(
    "/bundle",
    tags=["model"],
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": schemas.Problem}},
)
def get_bundle(request: Request) -> schemas.Bundle:
    """The model bundle in use (the live installed one, else the configured one)."""
    folder = bundle_in_use(request.app.state.database, request.app.state.settings.model.bundle_dir)
    try:
        return bundle_summary(folder)
    except BundleError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


@api.get("/bundles", tags=["model"])
def get_bundles(request: Request) -> list[schemas.InstalledBundle]:
    """Every installed bundle with its role: live (to the PACS), shadow (kept here) or off."""
    return installed(request.app.state.database)


router.include_router(health.router)
router.include_router(api)
