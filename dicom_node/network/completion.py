"""The completion watcher: turns complete studies into queued jobs and hands jobs to the executor.

Two rules decide that a study is complete (``db.models.CompletionRule``):

* instance count: an association of a caller in ``completion.query_callers`` that
  stored instances of the study was released (``network/releases.py``) and the
  caller, asked by C-FIND (``network/study_size.py``), holds no more instances of
  it than the node does;
* quiet time: no instance arrived for ``completion.quiet_seconds``, for every
  other study, including those whose caller could not say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from db import jobs
from db.jobs import ReleasedJob
from db.models import utcnow
from db.session import Database
from dicom_node.network.polling import Poller
from dicom_node.network.scu import Peer
from dicom_node.network.study_size import SizeUnknown, study_size
from dicom_node.settings import CompletionSettings
from pipeline.executors import Executor

log = logging.getLogger(__name__)

# Queries in flight at once: a sender that times out holds up one of them.
QUERY_THREADS = 2

# Records a transient failure of a job: (job id, stage, error, permanent=False).
FailJob = Callable[..., None]


@dataclass(frozen=True)
class Stalled:
    """Running jobs without progress for ``timeout_s`` are failed (and so retried)."""

    timeout_s: float
    fail: FailJob


class InstanceCountRule:
    """Asks the sender of a released study how many instances it has; queues the job if held.

    Queries run in a small thread pool, so a slow sender holds up neither the
    watcher's rounds nor the listener. A sender that cannot answer leaves the job
    to the quiet time (event ``completion.count_unknown``).
    """

    def __init__(
        self,
        *,
        database: Database,
        settings: CompletionSettings,
        calling_ae: str,
        queued: Callable[[], None],
    ) -> None:
        self._database = database
        self._settings = settings
        self._calling_ae = calling_ae
        self._queued = queued
        self._pool = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="llnm-size")

    def ask(self, released: ReleasedJob) -> None:
        """Query the sender of ``released`` in the background."""
        self._pool.submit(self._ask, released)

    def _ask(self, released: ReleasedJob) -> None:
        caller = self._settings.query_caller(released.released_by)
        if caller is None:  # no longer configured: the quiet time decides
            return
        peer = Peer(
            host=caller.host,
            port=caller.port,
            called_ae=caller.called_ae_title or caller.ae_title,
            calling_ae=self._calling_ae,
        )
        try:
            expected = study_size(
                peer, released.study_instance_uid, timeout_s=self._settings.query_timeout_s
            )
        except SizeUnknown as exc:
            self._unknown(released.job_id, caller.ae_title, str(exc))
            return
        except Exception as exc:  # boundary: a sender's answer must never end the node
            log.exception(
                "job %d: asking %s for its study's size failed", released.job_id, caller.ae_title
            )
            self._unknown(released.job_id, caller.ae_title, f"query failed ({type(exc).__name__})")
            return
        try:
            with self._database.session() as session:
                queued = jobs.queue_counted_job(
                    session, job_id=released.job_id, expected=expected, asked=caller.ae_title
                )
        except SQLAlchemyError as exc:
            log.error("job %d: the instance count rule could not record: %s", released.job_id, exc)
            return
        if queued:
            log.info(
                "job %d queued: the node holds the %d instances of its sender",
                released.job_id,
                expected,
            )
            self._queued()

    def _unknown(self, job_id: int, asked: str, reason: str) -> None:
        log.warning("job %d: %s did not say how large its study is (%s)", job_id, asked, reason)
        try:
            with self._database.session() as session:
                jobs.note_count_unknown(session, job_id=job_id, asked=asked, reason=reason)
        except SQLAlchemyError as exc:
            log.error("job %d: event not recorded (database unavailable): %s", job_id, exc)

    def shutdown(self) -> None:
        """Drop queries not yet started; wait for the running ones (each bounded by the timeout)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class CompletionWatcher:
    """Polls the database: complete studies become queued jobs; queued jobs are dispatched.

    With ``stalled`` (the distributed mode), a running job that made no progress
    for that long lost its worker or its message and is retried.
    """

    def __init__(
        self,
        *,
        database: Database,
        executor: Executor,
        settings: CompletionSettings,
        calling_ae: str,
        stalled: Stalled | None = None,
    ) -> None:
        self._database = database
        self._executor = executor
        self._stalled = stalled
        self._quiet = timedelta(seconds=settings.quiet_seconds)
        self._poller = Poller(
            "watcher", settings.poll_seconds, self.tick, survives=(SQLAlchemyError,)
        )
        self._count_rule = (
            InstanceCountRule(
                database=database,
                settings=settings,
                calling_ae=calling_ae,
                queued=self._poller.wake,
            )
            if settings.query_callers
            else None
        )

    def tick(self) -> list[int]:
        """One pass; returns the ids of the jobs handed to the executor."""
        now = utcnow()
        with self._database.session() as session:
            queued = jobs.queue_settled_jobs(session, settled_before=now - self._quiet)
            released = jobs.take_released_jobs(session) if self._count_rule else []
            due = jobs.take_dispatchable_jobs(session, now=now)
        if queued:
            log.info("studies settled; queued jobs %s", queued)
        if self._count_rule is not None:
            for job in released:
                self._count_rule.ask(job)
        if self._stalled is not None:
            self._retry_stalled(now, self._stalled)
        for job_id in due:
            self._executor.submit(job_id)
        return due

    def _retry_stalled(self, now: datetime, stalled: Stalled) -> None:
        with self._database.session() as session:
            stalled_ids = jobs.stalled_jobs(
                session, stalled_before=now - timedelta(seconds=stalled.timeout_s)
            )
        for job_id, stage in stalled_ids:
            log.warning("job %d made no progress in %s; retried", job_id, stage)
            stalled.fail(
                job_id,
                stage,
                f"no progress for {stalled.timeout_s:.0f} s (worker or broker lost)",
                permanent=False,
            )

    def wake(self) -> None:
        """Run the next pass now (a study may be complete) instead of at the next poll."""
        self._poller.wake()

    def start(self) -> None:
        """Start polling in a background thread."""
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and wait for the current pass and the queries in flight."""
        self._poller.stop()
        if self._count_rule is not None:
            self._count_rule.shutdown()
