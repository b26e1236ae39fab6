"""The scope gate's plumbing: excluded images travel with the study; nothing left ends the job.

Gates
    Five stages apply the gate, each with what it has at hand: intake the
    header and region rules (:func:`imaging.scope.header_exclusion`,
    :func:`~imaging.scope.region_exclusion`), crop the pixel rules
    (:func:`~imaging.scope.pixel_exclusion`), segment the thyroid check,
    features the index nodule's detection confidence, infer the
    out-of-distribution score (:mod:`models.scope`). An image a gate
    excludes is an :class:`ExcludedImage` in every later stage's output, so
    the result can say which views were used and which were not, and why.
Not assessed
    A gate that leaves no image returns :class:`NotAssessed` instead of its
    stage's usual output; the stage's ``store`` (:func:`gated`) records the
    job's result with outcome ``not_assessed``, the study's reason
    (:func:`study_exclusion`) and every excluded image, and ends the job
    (done, not failed). No probability is ever computed or stored for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from sqlalchemy.orm import Session

from db import results
from imaging.scope_reasons import Exclusion, Reason
from pipeline.contracts import ExcludedImage
from pipeline.stage import JobConcluded

NOT_ASSESSED = "not_assessed"


@dataclass(frozen=True)
class NotAssessed:
    """What a gated stage returns when no image of the study is left to assess."""

    SCHEMA_VERSION: ClassVar[int] = 1  # of the stage output file (pipeline.stage_outputs)

    job_id: int
    exclusion: Exclusion  # the study's reason
    excluded: tuple[ExcludedImage, ...]


def study_exclusion(excluded: Sequence[ExcludedImage]) -> Exclusion:
    """The study's reason: the most frequent among its images (the earlier gate on ties).

    The detail counts the images per reason when they differ.

    Raises
    ------
    ValueError
        If ``excluded`` is empty.
    """
    if not excluded:
        raise ValueError("a study is not assessed only when images were excluded")
    counts = Counter(e.exclusion.reason for e in excluded)
    order = list(Reason)
    reason = max(counts, key=lambda r: (counts[r], -order.index(r)))
    if len(counts) == 1:
        details = {e.exclusion.detail for e in excluded}
        return Exclusion(reason, details.pop() if len(details) == 1 else "")
    detail = ", ".join(f"{n} {r.text}" for r, n in counts.most_common())
    return Exclusion(reason, f"images: {detail}")


def not_assessed(
    job_id: int, excluded: Sequence[ExcludedImage], *, before: Sequence[ExcludedImage] = ()
) -> NotAssessed:
    """The end of a study whose images ``before`` and ``excluded`` were all left out."""
    everything = (*before, *excluded)
    return NotAssessed(job_id, study_exclusion(excluded), tuple(everything))


View = TypeVar("View")


def partition(
    views: Iterable[View],
    exclusion_of: Callable[[View], Exclusion | None],
    uid_of: Callable[[View], str],
) -> tuple[tuple[View, ...], tuple[ExcludedImage, ...]]:
    """``views`` split by a gate: those it keeps, and the others with why, in order."""
    kept: list[View] = []
    excluded: list[ExcludedImage] = []
    for view in views:
        exclusion = exclusion_of(view)
        if exclusion is None:
            kept.append(view)
        else:
            excluded.append(ExcludedImage(uid_of(view), exclusion))
    return tuple(kept), tuple(excluded)


def describe_excluded(excluded: Sequence[ExcludedImage]) -> list[dict[str, str]]:
    """The excluded images for the job database and the audit trail."""
    return [
        {
            "sop_instance_uid": e.sop_instance_uid,
            "reason": e.exclusion.reason.value,
            "text": e.exclusion.text,
        }
        for e in excluded
    ]


def summarize_not_assessed(result: NotAssessed) -> dict[str, Any]:
    """A not-assessed study for the audit trail."""
    return {
        "not_assessed": result.exclusion.reason.value,
        "text": result.exclusion.text,
        "excluded": describe_excluded(result.excluded),
    }


def record_not_assessed(session: Session, job_id: int, result: NotAssessed) -> JobConcluded:
    """Record the ``not_assessed`` result with its reason and end the job."""
    results.save_result(
        session,
        job_id=job_id,
        outcome=NOT_ASSESSED,
        reason=result.exclusion.reason.value,
        detail={
            "reason": result.exclusion.reason.value,
            "text": result.exclusion.text,
            "excluded": describe_excluded(result.excluded),
        },
    )
    return JobConcluded(NOT_ASSESSED)


Out = TypeVar("Out")
Store = Callable[[Session, int, Out], Any]


def gated(store: Store[Out] | None = None) -> Callable[[Session, int, Out | NotAssessed], Any]:
    """A stage ``store`` that ends a :class:`NotAssessed` study, else runs ``store`` (if any)."""

    def gate(session: Session, job_id: int, value: Out | NotAssessed) -> Any:
        if isinstance(value, NotAssessed):
            return record_not_assessed(session, job_id, value)
        return value if store is None else store(session, job_id, value)

    return gate


def gated_summary(
    summarize: Callable[[Out], dict[str, Any]],
) -> Callable[[Out | NotAssessed], dict[str, Any]]:
    """A stage ``summarize`` that also describes a :class:`NotAssessed` study."""

    def summary(value: Out | NotAssessed) -> dict[str, Any]:
        if isinstance(value, NotAssessed):
            return summarize_not_assessed(value)
        return summarize(value)

    return summary
