"""Runs one job's stages in order and keeps the database's account of it.

Failures
    A :class:`StageError` (bad input, said in words) and any error that cannot
    be transient (a ValueError from a malformed file, a bug) fail the job for
    good at once (``failed``, with a failure notice to the PACS); only errors
    that can pass (:data:`TRANSIENT_ERRORS`: the file system, memory, the
    database, an out-of-memory GPU, a bundle being replaced) are retried with
    backoff until ``dead``. Every error text is scrubbed of the study's
    identifying header values (:mod:`imaging.redaction`) before it reaches the
    log, the job, its events or the notice.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from db import bundles, events, jobs, results
from db.models import EventLevel, JobState
from db.session import Database
from imaging.errors import StageError
from imaging.redaction import Redactor, study_redactor
from models.bundle import MANIFEST_FILE, BundleError, bundle_digest, bundle_identity
from pipeline.contracts import StudyInput, instance_refs
from pipeline.spool import SpoolLayout
from pipeline.stage import JobConcluded, Stage


class JobNotices(Protocol):
    """Tells the PACS about jobs that end without a prediction (in the closing transaction)."""

    def failed(self, session: Session, job_id: int, error: str) -> None:
        """Job ``job_id`` failed for good with ``error``."""

    def concluded(self, session: Session, job_id: int, outcome: str) -> None:
        """Job ``job_id`` ended early, done, with ``outcome`` (e.g. no nodule found)."""


log = logging.getLogger(__name__)

# Errors that may not happen again on a later attempt.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError and ConnectionError
    MemoryError,
    OperationalError,
    InterfaceError,
    BundleError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass when the job is tried again (module docstring)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class StageStep:
    """What running one stage gave: the next stage's input, or the end of the job."""

    value: Any
    ended: bool
    concluded: bool = False  # ended early by a stage's JobConcluded (not a failure)


@dataclass(frozen=True)
class RetryPolicy:
    """How unexpected (possibly transient) stage errors are retried."""

    max_attempts: int = 3
    backoff_s: float = 5.0


class JobRunner:
    """Claims a queued job, feeds each stage the previous stage's output, records it all."""

    def __init__(
        self,
        *,
        database: Database,
        spool: SpoolLayout,
        stages: Sequence[Stage[Any, Any]],
        retry: RetryPolicy,
        notices: JobNotices | None = None,
        default_bundle: Path | None = None,
    ) -> None:
        self._database = database
        self._default_bundle = default_bundle
        self._spool = spool
        self._stages = tuple(stages)
        self._retry = retry
        self._notices = notices

    @property
    def stages(self) -> tuple[Stage[Any, Any], ...]:
        """The stages, first to last."""
        return self._stages

    @property
    def spool(self) -> SpoolLayout:
        """The spool the jobs' files are in (shared with workers in the distributed mode)."""
        return self._spool

    def claim(self, job_id: int) -> int | None:
        """Take job ``job_id`` if it is still queued; returns its attempt number, else None."""
        with self._database.session() as session:
            claimed = jobs.claim_job(session, job_id=job_id)
        if claimed is None:
            log.info("job %d is no longer queued; skipped", job_id)
            return None
        log.info("job %d attempt %d started", job_id, claimed.attempt)
        return claimed.attempt

    def is_current(self, job_id: int, attempt: int) -> bool:
        """Whether attempt ``attempt`` of job ``job_id`` is the one running now."""
        with self._database.session() as session:
            return jobs.running_attempt(session, job_id=job_id) == attempt

    def study_input(self, job_id: int) -> StudyInput:
        """The first stage's input: the study's instances in the spool, the live bundle."""
        with self._database.session() as session:
            source = jobs.job_source(session, job_id=job_id)
            live = bundles.live_bundle(session)
        work_dir = self._spool.work_dir(job_id)
        work_dir.mkdir(parents=True, exist_ok=True)
        return StudyInput(
            job_id=job_id,
            study_instance_uid=source.study_instance_uid,
            instances=instance_refs(source, self._spool),
            work_dir=work_dir,
            bundle_dir=None if live is None else live.path,
        )

    def run(self, job_id: int) -> None:
        """Run job ``job_id`` if it is still queued; every outcome ends up in the database.

        A job cancelled meanwhile stops before its next stage.
        """
        if self.claim(job_id) is None:
            return
        value: Any = self.study_input(job_id)
        for index in range(len(self._stages)):
            step = self.run_stage(job_id, index, value)
            if step.concluded:
                self.after_conclusion(job_id, index)
            if step.ended:
                return
            value = step.value
        self.finish(job_id)

    def after_conclusion(self, job_id: int, index: int) -> None:
        """Run the stages after ``index`` that also serve concluded jobs (the shadow stage).

        The job is done already; each such stage loads its own input (``load`` gets
        None), and its failure is a warning event, never a change of the job.
        """
        for stage in self._stages[index + 1 :]:
            if not stage.after_conclusion or stage.load is None:
                continue
            started = time.perf_counter()
            try:
                with self._database.session() as session:
                    value = stage.load(session, job_id, None)
                value = stage.run(value)
                with self._database.session() as session:
                    if stage.store is not None:
                        stage.store(session, job_id, value)
                    events.record_event(
                        session,
                        kind="stage.done",
                        message=f"{stage.name} done after the job was concluded",
                        job_id=job_id,
                        detail={
                            "stage": stage.name,
                            "seconds": round(time.perf_counter() - started, 3),
                            "summary": stage.summarize(value),
                        },
                    )
            except Exception as exc:  # boundary: the job's own outcome stands
                log.exception("job %d: %s after conclusion failed", job_id, stage.name)
                with self._database.session() as session:
                    events.record_event(
                        session,
                        kind="stage.failed_after_conclusion",
                        level=EventLevel.WARNING,
                        message=f"{stage.name} failed: {type(exc).__name__}: {exc}",
                        job_id=job_id,
                    )

    def run_stage(self, job_id: int, index: int, value: Any) -> StageStep:
        """Run stage ``index`` on ``value`` and record it; the step says whether the job ended.

        A stage error fails the job (permanently for :class:`StageError`, else with
        a retry); a :class:`JobConcluded` from the stage's store finishes it early.
        """
        stage = self._stages[index]
        with self._database.session() as session:
            if not jobs.job_is_running(session, job_id=job_id):
                return self._stopped(job_id, stage.name)
            jobs.enter_stage(session, job_id=job_id, stage=stage.name)
            if stage.load is not None:
                value = stage.load(session, job_id, value)
        started = time.perf_counter()
        try:
            value = stage.run(value)
        except StageError as exc:
            self.fail(job_id, stage.name, str(exc), permanent=True)
            return StageStep(None, ended=True)
        except Exception as exc:  # boundary: any stage bug or outage becomes a job event
            redact = self.redactor(job_id)
            trace = "".join(traceback.format_exception(exc)).rstrip()
            log.error("job %d: stage %s raised\n%s", job_id, stage.name, redact(trace))
            error = f"{type(exc).__name__}: {exc}"
            self.fail(job_id, stage.name, error, permanent=not is_transient(exc), redact=redact)
            return StageStep(None, ended=True)
        with self._database.session() as session:
            if not jobs.job_is_running(session, job_id=job_id):
                return self._stopped(job_id, stage.name)
            jobs.complete_stage(
                session,
                job_id=job_id,
                stage=stage.name,
                seconds=time.perf_counter() - started,
                summary=stage.summarize(value),
            )
            if stage.store is not None:
                value = stage.store(session, job_id, value)
            if isinstance(value, JobConcluded):
                self._stamp(session, job_id)
                jobs.finish_job(session, job_id=job_id, outcome=value.outcome)
                if self._notices is not None:
                    self._notices.concluded(session, job_id, value.outcome)
                log.info("job %d done after %s: %s", job_id, stage.name, value.outcome)
                return StageStep(None, ended=True, concluded=True)
        return StageStep(value, ended=False)

    def _stamp(self, session: Session, job_id: int) -> None:
        """Name the bundle on a result without a prediction (no nodule, not assessed).

        It is the live installed bundle, else the node's configured one: the bundle
        whose gates and segmenters ended the job, so site validation counts the study.
        """
        folder = bundles.folder_in_use(session, self._default_bundle)
        if folder is None:
            return
        identity = bundle_identity(folder)
        results.name_bundle(
            session,
            job_id=job_id,
            name=identity.name,
            version=identity.version,
            sha256=bundle_digest(folder) if (folder / MANIFEST_FILE).is_file() else "",
            synthetic=identity.clinical_use_label is not None,
        )

    def _stopped(self, job_id: int, stage: str) -> StageStep:
        """The end of a job that stopped running (an admin cancelled it) around ``stage``."""
        log.info("job %d is no longer running; stopped at %s", job_id, stage)
        return StageStep(None, ended=True)

    def finish(self, job_id: int) -> None:
        """Record that every stage of job ``job_id`` is done, unless it was cancelled meanwhile."""
        with self._database.session() as session:
            if not jobs.job_is_running(session, job_id=job_id):
                return
            jobs.finish_job(session, job_id=job_id)
        log.info("job %d done", job_id)

    def redactor(self, job_id: int) -> Redactor:
        """What scrubs job ``job_id``'s error texts of its study's identifying values."""
        try:
            return study_redactor(ref.path for ref in self.study_input(job_id).instances)
        except Exception:  # boundary: without the study, no values to know; never mask the error
            log.warning("job %d: the study's values could not be read for redaction", job_id)
            return Redactor()

    def fail(
        self,
        job_id: int,
        stage: str,
        error: str,
        *,
        permanent: bool,
        redact: Redactor | None = None,
    ) -> None:
        """Record a failure of ``stage``: permanent (failed) or retried with backoff (then dead).

        ``error`` is scrubbed of the study's identifying values first (by
        ``redact``, else the study's own :meth:`redactor`). A job that is no
        longer running (cancelled) keeps its state.
        """
        error = (redact or self.redactor(job_id))(error)
        with self._database.session() as session:
            if not jobs.job_is_running(session, job_id=job_id):
                return
            state = jobs.fail_job(
                session,
                job_id=job_id,
                stage=stage,
                error=error,
                max_attempts=0 if permanent else self._retry.max_attempts,
                backoff_s=self._retry.backoff_s,
            )
            if state in (JobState.FAILED, JobState.DEAD) and self._notices is not None:
                self._notices.failed(session, job_id, f"{stage}: {error}")
        log.warning("job %d: %s failed (%s); job is now %s", job_id, stage, error, state.value)
