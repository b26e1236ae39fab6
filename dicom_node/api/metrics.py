"""Prometheus metrics, read from the job database at scrape time.

Counting in the database rather than in process memory gives the same numbers in
the embedded mode and in the distributed mode, where workers in other processes run
the stages. Each app has its own registry; nothing is registered globally.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from db import metrics as db_metrics
from db.session import Database
from dicom_node.api.auth import Caller, require_caller
from dicom_node.api.schemas import Problem
from imaging.scope_reasons import Reason

router = APIRouter(tags=["metrics"])


class DatabaseCollector:
    """A ``prometheus_client`` collector over the job database."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the database as metric families."""
        with self._database.session() as session:
            counts = db_metrics.node_counts(session)
        received = CounterMetricFamily(
            "llnm_instances_received", "SOP instances stored (resent duplicates not counted)."
        )
        received.add_metric([], counts.instances_stored)
        yield received
        jobs = GaugeMetricFamily(
            "llnm_jobs", "Jobs by state; state=queued is the queue depth.", labels=["state"]
        )
        for state, count in counts.jobs_by_state.items():
            jobs.add_metric([state.value], count)
        yield jobs
        failures = CounterMetricFamily(
            "llnm_job_failures", "Jobs that failed or went dead (each time).", labels=["state"]
        )
        for state, count in counts.job_failures.items():
            failures.add_metric([state.value], count)
        yield failures
        exports = GaugeMetricFamily(
            "llnm_exports", "Result objects per destination by state.", labels=["state"]
        )
        for export_state, count in counts.exports_by_state.items():
            exports.add_metric([export_state.value], count)
        yield exports
        outcomes = CounterMetricFamily(
            "llnm_results", "Job results by outcome (predicted, not_assessed, ...).",
            labels=["outcome"],
        )  # fmt: skip
        for outcome, count in sorted(counts.results_by_outcome.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        reasons = CounterMetricFamily(
            "llnm_not_assessed",
            "Studies not assessed by the scope gate, by coded reason.",
            labels=["reason"],
        )
        for reason in Reason:
            reasons.add_metric([reason.value], counts.not_assessed_by_reason.get(reason.value, 0))
        yield reasons
        completions = CounterMetricFamily(
            "llnm_study_completions",
            "Studies found complete (jobs queued), by the rule that decided it.",
            labels=["rule"],
        )
        for rule, count in counts.completions_by_rule.items():
            completions.add_metric([rule.value], count)
        yield completions
        yield _stage_histogram(counts.stage_durations)


def _stage_histogram(durations: tuple[db_metrics.StageDurations, ...]) -> Metric:
    histogram = HistogramMetricFamily(
        "llnm_stage_duration_seconds", "Duration of finished stage runs.", labels=["stage"]
    )
    for stage in durations:
        buckets = [(repr(bound), float(count)) for bound, count in stage.buckets]
        histogram.add_metric(
            [stage.stage], [*buckets, ("+Inf", float(stage.count))], stage.total_seconds
        )
    return histogram


def registry_of(app: FastAPI) -> CollectorRegistry:
    """The app's registry, made with its collector on first use."""
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector(app.state.database))
        app.state.metrics_registry = registry
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        status.HTTP_200_OK: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        status.HTTP_401_UNAUTHORIZED: {"model": Problem},
    },
)
def metrics(request: Request, _caller: Annotated[Caller, Depends(require_caller)]) -> Response:
    """Node metrics for Prometheus (bearer token as for the API)."""
    return Response(generate_latest(registry_of(request.app)), media_type=CONTENT_TYPE_LATEST)
