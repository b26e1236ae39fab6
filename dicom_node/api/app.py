"""The FastAPI application: JSON API, health and metrics, and the dashboard."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI

from db.session import Database
from dicom_node.api import dashboard, metrics, routes
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
    )
    app.state.settings = settings
    app.state.database = database
    app.state.spool = spool
    app.include_router(metrics.router)
    app.include_router(routes.router)
    dashboard.mount(app)
    return app
