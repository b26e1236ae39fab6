"""Liveness and readiness probes; the only paths that need no token."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.exc import SQLAlchemyError

from db import metrics
from db.session import Database
from dicom_node.api.bundle import bundle_in_use, read_manifest
from dicom_node.api.schemas import Check, CheckName, Health, Readiness
from dicom_node.settings import Settings
from models.bundle import BundleError
from pipeline.spool import SpoolLayout

router = APIRouter(prefix="/health", tags=["health"])
log = logging.getLogger(__name__)


@router.get("")
def health() -> Health:
    """Liveness: the process answers."""
    return Health()


def _database(database: Database) -> None:
    with database.session() as session:
        metrics.ping(session)


def _spool(spool: SpoolLayout) -> None:
    with tempfile.NamedTemporaryFile(dir=spool.tmp, prefix="ready-") as probe:
        probe.write(b"ok")
        probe.flush()


def _bundle(folder: Path) -> None:
    read_manifest(folder)


def _check(
    name: CheckName, probe: Callable[[], None], errors: tuple[type[Exception], ...]
) -> Check:
    try:
        probe()
    except errors as exc:
        log.warning("readiness check %s failed: %s", name, exc)
        return Check(name=name, ok=False, error=type(exc).__name__)
    return Check(name=name, ok=True)


@router.get(
    "/ready",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness}},
)
def ready(request: Request, response: Response) -> Readiness:
    """Readiness: the database answers, the spool takes files, the bundle in use reads.

    The bundle in use is the live installed one, else the configured one.
    """
    settings: Settings = request.app.state.settings
    checks = [
        _check("database", lambda: _database(request.app.state.database), (SQLAlchemyError,)),
        _check("spool", lambda: _spool(request.app.state.spool), (OSError,)),
        _check(
            "model_bundle",
            lambda: _bundle(bundle_in_use(request.app.state.database, settings.model.bundle_dir)),
            (BundleError, SQLAlchemyError),
        ),
    ]
    ok = all(check.ok for check in checks)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ok else "not ready", checks=checks)
