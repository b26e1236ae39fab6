"""A job's result: the prediction, or the outcome that explains why there is none."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.jobs import JobStateError
from db.models import AnswerColumns, Result, ShadowResult


@dataclass(frozen=True)
class Prediction:
    """What the model said about a study, as the results table keeps it."""

    probability: float
    threshold: float
    positive: bool
    risk_stage: int
    bundle_name: str
    bundle_version: str
    bundle_sha256: str  # models.bundle.bundle_digest
    synthetic_bundle: bool
    report_text_used: bool
    contributions: dict[str, float]


def save_result(
    session: Session,
    *,
    job_id: int,
    outcome: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    prediction: Prediction | None = None,
) -> Result:
    """Record the job's result, replacing the one an earlier attempt may have left.

    ``reason`` is the coded reason of an outcome without a prediction (not assessed).
    """
    existing = session.scalar(select(Result).where(Result.job_fk == job_id))
    if existing is not None:
        session.delete(existing)
        session.flush()
    values = {} if prediction is None else asdict(prediction)
    result = Result(job_fk=job_id, outcome=outcome, reason=reason, detail=detail, **values)
    session.add(result)
    session.flush()
    return result


# What a shadow result keeps of a prediction: the answer columns both tables share.
_SHADOW_FIELDS = tuple(f.name for f in fields(Prediction) if hasattr(AnswerColumns, f.name))


def save_shadow_result(
    session: Session,
    *,
    job_id: int,
    bundle_id: int,
    outcome: str,
    reason: str | None = None,
    prediction: Prediction | None = None,
    detail: dict[str, Any] | None = None,
) -> ShadowResult:
    """Record shadow bundle ``bundle_id``'s answer on job ``job_id``, replacing an earlier one."""
    existing = session.scalar(
        select(ShadowResult).where(
            ShadowResult.job_fk == job_id, ShadowResult.bundle_fk == bundle_id
        )
    )
    if existing is not None:
        session.delete(existing)
        session.flush()
    values = {} if prediction is None else {k: getattr(prediction, k) for k in _SHADOW_FIELDS}
    result = ShadowResult(
        job_fk=job_id, bundle_fk=bundle_id, outcome=outcome, reason=reason, detail=detail, **values
    )
    session.add(result)
    session.flush()
    return result


def name_bundle(
    session: Session, *, job_id: int, name: str, version: str, sha256: str, synthetic: bool
) -> None:
    """Name the bundle on job ``job_id``'s result if it names none (no prediction).

    A result that names its bundle keeps it.
    """
    result = session.scalar(select(Result).where(Result.job_fk == job_id))
    if result is None or result.bundle_name:
        return
    result.bundle_name, result.bundle_version = name, version
    result.bundle_sha256, result.synthetic_bundle = sha256, synthetic


def add_result_detail(session: Session, *, job_id: int, **detail: Any) -> None:
    """Add (or replace) keys of the detail of job ``job_id``'s result.

    Raises
    ------
    JobStateError
        If the job has no result yet.
    """
    result = session.scalar(select(Result).where(Result.job_fk == job_id))
    if result is None:
        raise JobStateError(f"job {job_id} has no result to add to")
    result.detail = {**(result.detail or {}), **detail}


def result_detail(session: Session, *, job_id: int) -> dict[str, Any]:
    """The detail of job ``job_id``'s result ({} without a result or a detail)."""
    result = session.scalar(select(Result).where(Result.job_fk == job_id))
    return {} if result is None or result.detail is None else dict(result.detail)
