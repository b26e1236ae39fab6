"""The server-rendered web dashboard under /ui: jobs, results and exports.

Pages authenticate with the ``llnm_token`` cookie its login page sets and send a
visitor without one to that page. Every read and write goes through
:mod:`db.jobs` and :mod:`db.exports`; actions are audited under the token's name.
Nothing is loaded from outside the node: templates, CSS and the few lines of JS
that poll job states are all served from this package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.orm import Session

from db import exports, jobs, listings, outcomes
from db.models import ExportState, JobState
from db.session import Database
from dicom_node.api.auth import (
    COOKIE,
    Caller,
    Sessions,
    identify,
    presented_caller,
    require_caller,
)
from dicom_node.api.bundle import bundle_in_use, installed
from dicom_node.api.files import Heatmap, heatmaps, listed_objects
from dicom_node.api.routes import JobId, read_outcome_file, store_outcomes
from imaging.scope_reasons import outcome_text
from models.bundle import BundleError
from models.model_card import bundle_card
from models.risk_map import RISK_MAP_DIR, SUMMARY_FILE

_HERE = Path(__file__).parent
_FLASH = "llnm_flash"
PAGE_SIZE = 25
ACTIVE_STATES = frozenset({JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING})
CHART_BAR_WIDTH = 320  # px of a 100 % contribution

_TEMPLATES = Jinja2Templates(
    env=Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=True)
)

router = APIRouter(prefix="/ui", include_in_schema=False)


class _LoginRequired(Exception):
    """A page was asked for without a valid token."""


def mount(app: FastAPI) -> None:
    """Add the dashboard's pages and static files to ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.add_exception_handler(_LoginRequired, _to_login)


async def _to_login(_request: Request, _exc: Exception) -> Response:
    return RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)


def page_caller(request: Request) -> Caller:
    """FastAPI dependency: the caller of a page; without a valid token, go to the login page."""
    caller = presented_caller(request)
    if caller is None:
        raise _LoginRequired
    return caller


PageCaller = Annotated[Caller, Depends(page_caller)]
JsonCaller = Annotated[Caller, Depends(require_caller)]


def _session(request: Request) -> AbstractContextManager[Session]:
    database: Database = request.app.state.database
    return database.session()


def _render(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page, with the flash message a redirect left (which is then cleared)."""
    flash = request.cookies.get(_FLASH)
    kind, _, message = unquote(flash or "").partition(":")
    response = _TEMPLATES.TemplateResponse(
        request,
        template,
        {**context, "flash": message, "flash_kind": kind},
        status_code=status_code,
    )
    if flash:
        response.delete_cookie(_FLASH, path="/ui")
    return response


def _redirect(url: str, message: str, *, error: bool = False) -> RedirectResponse:
    """A redirect to ``url`` that shows ``message`` there once."""
    response = RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)
    kind = "error" if error else "ok"
    response.set_cookie(
        _FLASH, quote(f"{kind}:{message}"), path="/ui", httponly=True, samesite="strict"
    )
    return response


# --- login ----------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    """The login form."""
    return _render(request, "login.html", error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
    """Check the token; a valid one opens a session, whose id an HttpOnly cookie keeps."""
    caller = identify(token, request.app.state.settings.api.tokens)
    if caller is None:
        return _render(
            request, "login.html", status.HTTP_401_UNAUTHORIZED, error="That token is not valid."
        )
    sessions: Sessions = request.app.state.sessions
    response = RedirectResponse("/ui/", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        sessions.open(caller),
        max_age=int(sessions.seconds),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_tls(request),
    )
    return response


def _over_tls(request: Request) -> bool:
    """Whether the browser reached us over TLS (directly, or through the vouched-for proxy)."""
    api = request.app.state.settings.api
    return request.url.scheme == "https" or api.tls.enabled or api.behind_tls_proxy


@router.get("/logout")
def logout(request: Request) -> Response:
    """End the session and forget its cookie."""
    sessions: Sessions = request.app.state.sessions
    sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- job list ---------------------------------------------------------------------


def result_text(summary: listings.JobSummary | None) -> str:
    """A job's result in a few words: probability and risk stage, or the outcome."""
    if summary is None or summary.outcome is None:
        return "—"
    if summary.probability is None:
        return outcome_text(summary.outcome, summary.reason)
    return f"{summary.probability:.2f} · stage {summary.risk_stage}"


def _state_filter(state: str) -> list[JobState]:
    return [s for s in JobState if s.value == state]


@router.get("/", response_class=HTMLResponse)
def job_list(
    request: Request, _caller: PageCaller, state: str = "", ae: str = "", page: int = 1
) -> HTMLResponse:
    """Jobs, newest first, filtered by state and calling AE, a page at a time."""
    page = max(page, 1)
    with _session(request) as session:
        jobs = listings.list_jobs(
            session,
            listings.AdminFilter(states=_state_filter(state), calling_ae=ae.strip() or None),
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        summaries = listings.job_summaries(session, job_ids=[job.id for job in jobs])
    return _render(
        request,
        "jobs.html",
        jobs=jobs[:PAGE_SIZE],
        summaries=summaries,
        result_text=result_text,
        states=[s.value for s in JobState],
        state=state,
        ae=ae,
        page=page,
        has_next=len(jobs) > PAGE_SIZE,
    )


@router.get("/jobs.json")
def job_states(request: Request, _caller: JsonCaller, ids: str = "") -> dict[str, Any]:
    """State, stage and result of the jobs ``ids`` (comma separated), for the list's polling."""
    wanted = [int(part) for part in ids.split(",")[:PAGE_SIZE] if part.strip().isdigit()]
    with _session(request) as session:
        summaries = listings.job_summaries(session, job_ids=wanted)
    return {
        str(job_id): {
            "state": summary.state,
            "stage": summary.stage or "",
            "result": result_text(summary),
            "synthetic": summary.synthetic_bundle,
        }
        for job_id, summary in summaries.items()
    }


# --- one job ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One bar of the contributions chart."""

    label: str
    percent: float
    y: int
    width: float
    effect: str  # "raises" / "lowers" the risk, "" when unknown or none


@dataclass(frozen=True)
class ReportObject:
    """A result object and where it was sent."""

    kind: str
    sop_instance_uid: str
    exports: tuple[exports.ExportRow, ...]


def contribution_bars(
    contributions: dict[str, Any] | None, signed: dict[str, Any] | None = None
) -> list[Bar]:
    """The contributions chart's bars, largest first, 28 px apart, with their direction."""
    ranked = sorted((contributions or {}).items(), key=lambda item: -float(item[1]))

    def effect(name: str) -> str:
        value = float((signed or {}).get(name, 0.0))
        return "raises" if value > 0 else "lowers" if value < 0 else ""

    return [
        Bar(
            label=name,
            percent=float(percent),
            y=row * 28,
            width=max(float(percent), 0.0) / 100 * CHART_BAR_WIDTH,
            effect=effect(name),
        )
        for row, (name, percent) in enumerate(ranked)
    ]


def _heatmaps(request: Request, job_id: int, result: listings.ResultRow | None) -> list[Heatmap]:
    return heatmaps(request.app.state.spool, job_id, result)


def report_objects(
    result: listings.ResultRow | None, rows: list[exports.ExportRow]
) -> list[ReportObject]:
    """The result's objects (SR, SC, SEG) with their exports; exported notices too."""
    kinds = {uid: kind.upper() for kind, uid, _ in listed_objects(result)}
    for row in rows:
        kinds.setdefault(row.sop_instance_uid, "SR")
    return [
        ReportObject(
            kind=kind,
            sop_instance_uid=uid,
            exports=tuple(row for row in rows if row.sop_instance_uid == uid),
        )
        for uid, kind in kinds.items()
    ]


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, _caller: PageCaller, job_id: JobId) -> HTMLResponse:
    """One job: its result, heatmaps, report objects and timeline."""
    with _session(request) as session:
        detail = _detail_or_404(session, job_id)
        summary = listings.job_summaries(session, job_ids=[job_id]).get(job_id)
        rows = exports.list_exports(session, job_id=job_id)
    shown = [(h.path.name, h.view) for h in _heatmaps(request, job_id, detail.result)]
    return _render(
        request,
        "job.html",
        detail=detail,
        summary=summary,
        bars=contribution_bars(
            detail.result.contributions if detail.result else None,
            (detail.result.detail or {}).get("shapley_logit") if detail.result else None,
        ),
        chart_width=CHART_BAR_WIDTH,
        heatmaps=shown,
        objects=report_objects(detail.result, rows),
        can_retry=detail.job.state in (JobState.FAILED, JobState.DEAD)
        or any(r.state == ExportState.DEAD for r in rows),
        can_cancel=detail.job.state in ACTIVE_STATES,
    )


def _detail_or_404(session: Session, job_id: int) -> listings.JobDetail:
    try:
        return listings.job_detail(session, job_id=job_id)
    except jobs.JobNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}") from exc


@router.get("/jobs/{job_id}/heatmaps/{name}")
def heatmap(request: Request, _caller: PageCaller, job_id: JobId, name: str) -> FileResponse:
    """A heatmap overlay PNG of the job; only the files its result lists are served."""
    with _session(request) as session:
        result = _detail_or_404(session, job_id).result
    for found in _heatmaps(request, job_id, result):
        if found.path.name == name:
            return FileResponse(found.path, media_type="image/png")
    raise HTTPException(status.HTTP_404_NOT_FOUND, "no such heatmap")


# --- actions ----------------------------------------------------------------------


def _act(
    request: Request, job_id: int, back: str, action: Callable[[Session], str]
) -> RedirectResponse:
    """Run an audited action on a job and go back to where it was asked for."""
    url = "/ui/exports" if back == "exports" else f"/ui/jobs/{job_id}"
    try:
        with _session(request) as session:
            message = action(session)
    except (jobs.JobNotFoundError, jobs.JobStateError) as exc:
        return _redirect(url, str(exc), error=True)
    return _redirect(url, message)


@router.post("/jobs/{job_id}/retry")
def retry(
    request: Request, caller: PageCaller, job_id: JobId, back: Annotated[str, Form()] = "job"
) -> RedirectResponse:
    """Queue a failed or dead job again, or resend its dead exports."""

    def action(session: Session) -> str:
        count = exports.retry_job_or_exports(session, job_id=job_id, requested_by=caller.name)
        if count:
            return f"{count} export(s) of job {job_id} queued again."
        return f"Job {job_id} queued again."

    return _act(request, job_id, back, action)


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, caller: PageCaller, job_id: JobId) -> RedirectResponse:
    """Cancel a job that has not finished."""

    def action(session: Session) -> str:
        jobs.cancel_job(session, job_id=job_id, requested_by=caller.name)
        return f"Job {job_id} cancelled."

    return _act(request, job_id, "job", action)


# --- exports ----------------------------------------------------------------------


# --- outcomes ------------------------------------------------------------------------


@router.get("/outcomes", response_class=HTMLResponse)
def outcomes_page(request: Request, _caller: PageCaller) -> HTMLResponse:
    """The outcome upload form and how many studies have an outcome."""
    with _session(request) as session:
        counts = outcomes.outcome_counts(session)
    return _render(request, "outcomes.html", counts=counts, report=None)


@router.post("/outcomes", response_class=HTMLResponse)
def upload_outcomes(request: Request, caller: PageCaller, file: UploadFile) -> HTMLResponse:
    """Import an uploaded outcome CSV (as the API does; audited) and show what it did."""
    try:
        report = store_outcomes(request, read_outcome_file(file), imported_by=caller.name)
    except HTTPException as exc:
        with _session(request) as session:
            counts = outcomes.outcome_counts(session)
        return _render(
            request, "outcomes.html", exc.status_code, counts=counts, report=None, error=exc.detail
        )
    counts = {"studies": report.studies_with_outcome, "positive": report.positive}
    return _render(request, "outcomes.html", counts=counts, report=report)


# --- site validation -----------------------------------------------------------------


def _validation_reports(request: Request) -> dict[str, Path]:
    """Bundle name -> folder of each report ``llnm-node validate`` wrote."""
    root: Path = request.app.state.settings.data_dir / "validation"
    return {p.parent.name: p.parent for p in sorted(root.glob("*/validation.json"))}


@router.get("/validation", response_class=HTMLResponse)
def validation_page(request: Request, _caller: PageCaller) -> HTMLResponse:
    """The site validation reports: per bundle its overall numbers and a link to the page."""
    reports = {
        name: json.loads((folder / "validation.json").read_text(encoding="utf-8"))
        for name, folder in _validation_reports(request).items()
    }
    return _render(request, "validation.html", reports=reports)


@router.get("/validation/{bundle}/report", response_class=HTMLResponse)
def validation_report(request: Request, _caller: PageCaller, bundle: str) -> HTMLResponse:
    """The self-contained report page of one bundle; only reports the node wrote."""
    folder = _validation_reports(request).get(bundle)
    if folder is None or not (folder / "validation.html").is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report")
    return HTMLResponse((folder / "validation.html").read_text(encoding="utf-8"))


# --- model card ----------------------------------------------------------------------


@router.get("/bundle", response_class=HTMLResponse)
def bundle_page(request: Request, _caller: PageCaller) -> HTMLResponse:
    """The model card of the bundle in use, and every installed bundle with its role."""
    bundles = installed(request.app.state.database)
    try:
        card = bundle_card(_bundle_in_use(request))
    except BundleError as exc:
        return _render(request, "bundle.html", 503, card=None, error=str(exc), installed=bundles)
    return _render(request, "bundle.html", card=card, error=None, installed=bundles)


# --- population risk map ------------------------------------------------------------


def _bundle_in_use(request: Request) -> Path:
    return bundle_in_use(request.app.state.database, request.app.state.settings.model.bundle_dir)


def _risk_map_folder(request: Request) -> Path:
    return _bundle_in_use(request) / RISK_MAP_DIR


@router.get("/risk-map", response_class=HTMLResponse)
def risk_map_page(request: Request, _caller: PageCaller) -> HTMLResponse:
    """The bundle's population location risk maps, their case counts and statistics."""
    folder = _risk_map_folder(request)
    summary_path = folder / SUMMARY_FILE
    summary = (
        json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    )
    pictures = sorted(p.name for p in folder.glob("*.png")) if summary else []
    return _render(request, "risk_map.html", summary=summary, pictures=pictures)


@router.get("/risk-map/{name}")
def risk_map_picture(request: Request, _caller: PageCaller, name: str) -> FileResponse:
    """One PNG of the bundle's risk map; only the folder's own PNG files are served."""
    folder = _risk_map_folder(request)
    for found in folder.glob("*.png"):
        if found.name == name:
            return FileResponse(found, media_type="image/png")
    raise HTTPException(status.HTTP_404_NOT_FOUND, "no such picture")


@router.get("/exports", response_class=HTMLResponse)
def export_list(request: Request, _caller: PageCaller) -> HTMLResponse:
    """Dead and pending exports, with a Retry button per job that has dead ones."""
    with _session(request) as session:
        dead = exports.list_exports(session, state=ExportState.DEAD)
        pending = exports.list_exports(session, state=ExportState.PENDING)
    return _render(
        request,
        "exports.html",
        rows=dead + pending,
        retry_jobs=sorted({row.job_id for row in dead}),
    )
