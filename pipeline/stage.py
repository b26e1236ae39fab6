"""The stage contract: a named, typed function plus the queue it runs on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy.orm import Session

In = TypeVar("In")
Out = TypeVar("Out")

Queue = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class JobConcluded:
    """What a stage's ``store`` returns to end the job early, its result already recorded.

    The job is done (not failed): e.g. no nodule was found, so there is nothing to predict.
    """

    outcome: str


@dataclass(frozen=True)
class Stage(Generic[In, Out]):
    """One step of a job: ``run`` maps the previous stage's output to this stage's output."""

    name: str
    run: Callable[[In], Out]
    # What the audit trail keeps of the output (small, JSON-serialisable, no pixels, no PHI).
    summarize: Callable[[Out], dict[str, Any]]
    queue: Queue = "cpu"
    # Reads what the stage needs from the job database besides the previous stage's
    # output (e.g. the pseudonym map to re-identify results); ``run`` receives its return.
    load: Callable[[Session, int, Any], In] | None = None
    # Writes what must stay in the job database (e.g. the pseudonym map) in the
    # transaction that records the stage, and returns what the next stage receives
    # (or a JobConcluded, which ends the job there).
    store: Callable[[Session, int, Out], Any] | None = None
    # The class of what the stage passes on (``store``'s return if it has one, else
    # ``run``'s): the distributed mode saves it for the next stage's worker, which loads
    # it as this type (:mod:`pipeline.stage_outputs`). Every stage but the last needs one.
    output_type: type[Any] | None = None
    # Also run when an earlier stage concluded the job (JobConcluded): its ``load`` then
    # gets None and must read its input itself (the shadow stage reads the crop record).
    after_conclusion: bool = False
