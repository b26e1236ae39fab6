"""The completion watcher: turns quiet studies into queued jobs and hands jobs to the executor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from db import jobs
from db.models import utcnow
from db.session import Database
from dicom_node.network.polling import Poller
from pipeline.executors import Executor

log = logging.getLogger(__name__)


# Records a transient failure of a job: (job id, stage, error, permanent=False).
FailJob = Callable[..., None]


@dataclass(frozen=True)
class Stalled:
    """Running jobs without progress for ``timeout_s`` are failed (and so retried)."""

    timeout_s: float
    fail: FailJob


class CompletionWatcher:
    """Polls the database: settled studies become queued jobs; queued jobs are dispatched.

    With ``stalled`` (the distributed mode), a running job that made no progress
    for that long lost its worker or its message and is retried.
    """

    def __init__(
        self,
        *,
        database: Database,
        executor: Executor,
        quiet_seconds: float,
        poll_seconds: float,
        stalled: Stalled | None = None,
    ) -> None:
        self._database = database
        self._executor = executor
        self._stalled = stalled
        self._quiet = timedelta(seconds=quiet_seconds)
        self._poller = Poller("watcher", poll_seconds, self.tick, survives=(SQLAlchemyError,))

    def tick(self) -> list[int]:
        """One pass; returns the ids of the jobs handed to the executor."""
        now = utcnow()
        with self._database.session() as session:
            queued = jobs.queue_settled_jobs(session, settled_before=now - self._quiet)
            due = jobs.take_dispatchable_jobs(session, now=now)
        if queued:
            log.info("studies settled; queued jobs %s", queued)
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

    def start(self) -> None:
        """Start polling in a background thread."""
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and wait for the current pass."""
        self._poller.stop()
