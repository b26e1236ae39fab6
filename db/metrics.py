"""Aggregates the admin API reads at request time: readiness and the Prometheus counts.

Everything is computed from the database, so the numbers are the same whichever
process (node, worker) did the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import SQLColumnExpression, case, func, select
from sqlalchemy.orm import Session

from db.models import (
    CompletionRule,
    Event,
    ExportAttempt,
    ExportState,
    Instance,
    Job,
    JobState,
    Result,
)

_K = TypeVar("_K")

# Upper bounds (seconds) of the stage duration histogram's buckets.
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class StageDurations:
    """How long the finished runs of one stage took, as a cumulative histogram."""

    stage: str
    count: int
    total_seconds: float
    buckets: tuple[tuple[float, int], ...]  # (upper bound, runs that took at most that long)


@dataclass(frozen=True)
class NodeCounts:
    """What the node has done and holds, for the metrics endpoint."""

    instances_stored: int
    jobs_by_state: dict[JobState, int]  # every state, zero included
    job_failures: dict[JobState, int]  # failed / dead transitions ever recorded
    exports_by_state: dict[ExportState, int]  # every state, zero included
    stage_durations: tuple[StageDurations, ...]
    results_by_outcome: dict[str, int]  # predicted, no_nodule_found, not_assessed, ...
    not_assessed_by_reason: dict[str, int]  # the scope gate's reason codes present
    completions_by_rule: dict[CompletionRule, int]  # studies completed (job.queued), every rule


def ping(session: Session) -> None:
    """Run a trivial statement; raises if the database cannot be reached."""
    session.execute(select(1))


def node_counts(session: Session, *, buckets: Sequence[float] = STAGE_BUCKETS) -> NodeCounts:
    """Counts of instances, jobs, failures and exports, and the stage durations."""
    jobs = _grouped_counts(session, Job.state, Job.id)
    exports = _grouped_counts(session, ExportAttempt.state, ExportAttempt.id)
    failure_kinds = {f"job.{state.value}": state for state in (JobState.FAILED, JobState.DEAD)}
    failures = _grouped_counts(session, Event.kind, Event.id, Event.kind.in_(list(failure_kinds)))
    return NodeCounts(
        instances_stored=session.scalar(select(func.count(Instance.id))) or 0,
        jobs_by_state={state: jobs.get(state, 0) for state in JobState},
        job_failures={state: failures.get(kind, 0) for kind, state in failure_kinds.items()},
        exports_by_state={state: exports.get(state, 0) for state in ExportState},
        stage_durations=stage_durations(session, buckets=buckets),
        results_by_outcome=_grouped_counts(session, Result.outcome, Result.id),
        not_assessed_by_reason={
            str(reason): count
            for reason, count in _grouped_counts(
                session, Result.reason, Result.id, Result.reason.is_not(None)
            ).items()
        },
        completions_by_rule=completions_by_rule(session),
    )


def completions_by_rule(session: Session) -> dict[CompletionRule, int]:
    """How many times a study was complete (``job.queued`` events) by each rule."""
    rule = Event.detail["rule"].as_string()
    counts = _grouped_counts(session, rule, Event.id, Event.kind == "job.queued")
    return {r: counts.get(r.value, 0) for r in CompletionRule}


def _grouped_counts(
    session: Session,
    key: SQLColumnExpression[_K],
    counted: SQLColumnExpression[Any],
    *where: SQLColumnExpression[bool],
) -> dict[_K, int]:
    """Rows per value of ``key`` (among rows matching ``where``)."""
    query = select(key, func.count(counted)).where(*where).group_by(key)
    return {value: int(count) for value, count in session.execute(query)}


def stage_durations(
    session: Session, *, buckets: Sequence[float] = STAGE_BUCKETS
) -> tuple[StageDurations, ...]:
    """Per stage, the durations of its ``stage.done`` events, by stage name."""
    done = (
        select(
            Event.detail["stage"].as_string().label("stage"),
            Event.detail["seconds"].as_float().label("seconds"),
        )
        .where(Event.kind == "stage.done")
        .subquery()
    )
    rows = session.execute(
        select(
            done.c.stage,
            func.count(),
            func.coalesce(func.sum(done.c.seconds), 0.0),
            *(func.sum(case((done.c.seconds <= bound, 1), else_=0)) for bound in buckets),
        )
        .where(done.c.stage.is_not(None))
        .group_by(done.c.stage)
        .order_by(done.c.stage)
    ).all()
    return tuple(
        StageDurations(
            stage=str(row[0]),
            count=int(row[1]),
            total_seconds=float(row[2]),
            buckets=tuple(zip(buckets, (int(n or 0) for n in row[3:]), strict=True)),
        )
        for row in rows
    )
