"""The FastAPI application: JSON API, health and metrics, and the dashboard."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from db.session import Database
from dicom_node.api import dashboard, metrics, routes, security
from dicom_node.api.auth import Caller, Sessions, require_caller
from dicom_node.settings import Settings
from pipeline.spool import SpoolLayout


def create_app(settings: Settings, database: Database, spool: SpoolLayout) -> FastAPI:
    """The app for a node with ``settings``, its job ``database`` and its ``spool``."""
    app = FastAPI(
        title="LLNM node admin API",
        version=version("llnm-node"),
        description=(
            "Studies, jobs, results and exports of an LLNM node. Every path but /health "
            "needs a token: `Authorization: Bearer <token>`."
        ),
        docs_url=None,  # its page loads code from a public CDN
        redoc_url=None,
        openapi_url=None,  # served below, behind a token, when api.openapi is set
    )
    app.state.settings = settings
    app.state.database = database
    app.state.spool = spool
    app.state.sessions = Sessions(settings.api.session_minutes)
    security.install(app)
    app.include_router(metrics.router)
    app.include_router(routes.router)
    dashboard.mount(app)
    if settings.api.openapi:

        @app.get("/openapi.json", include_in_schema=False)
        def openapi(_caller: Annotated[Caller, Depends(require_caller)]) -> JSONResponse:
            return JSONResponse(app.openapi())

    return app
