"""Builds the job runner the node and the workers share from the settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from db.session import Database
from dicom_node.settings import Settings
from models.bundle import bundle_identity
from pipeline.celery_executor import celery_app
from pipeline.graph import default_stages
from pipeline.report.inputs import ReportOptions
from pipeline.report.stage import Notices
from pipeline.runner import JobNotices, JobRunner, RetryPolicy
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage


def spool_layout(settings: Settings) -> SpoolLayout:
    """The spool (shared by the node and its workers in the distributed mode)."""
    return SpoolLayout.at(settings.data_dir / "spool")


def distributed_app(settings: Settings) -> Celery | None:
    """The Celery app when a broker is configured; None for the embedded default."""
    if not settings.executor.broker_url:
        return None
    return celery_app(
        settings.executor.broker_url,
        visibility_timeout_s=settings.executor.visibility_timeout_s,
    )


def local_notices(settings: Settings) -> Notices:
    """Notices made in this process (the embedded node, or a cpu worker)."""
    return Notices(
        ReportOptions(**settings.report.model_dump()),
        spool_layout(settings),
        settings.export.destinations_for,
        bundle_identity(settings.model.bundle_dir),
    )


def job_runner(
    settings: Settings,
    database: Database,
    *,
    notices: JobNotices,
    stages: Sequence[Stage[Any, Any]] | None = None,
) -> JobRunner:
    """The runner over the default stages of the configured bundle (or ``stages``)."""
    spool = spool_layout(settings)
    return JobRunner(
        database=database,
        spool=spool,
        stages=default_stages(
            settings.model.bundle_dir,
            spool=spool,
            report=ReportOptions(**settings.report.model_dump()),
            destinations_for=settings.export.destinations_for,
            scope=settings.scope.rules(),
        )
        if stages is None
        else stages,
        retry=RetryPolicy(
            max_attempts=settings.executor.max_attempts,
            backoff_s=settings.executor.retry_backoff_s,
        ),
        notices=notices,
        default_bundle=settings.model.bundle_dir,
    )
