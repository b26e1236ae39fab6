"""The completion watcher: turns quiet studies into queued jobs and hands jobs to the executor."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from db import queries
from db.models import utcnow
from db.session import Database
from pipeline.executors import Executor

log = logging.getLogger(__name__)


class CompletionWatcher:
    """Polls the database: settled studies become queued jobs; queued jobs are dispatched."""

    def __init__(
        self,
        *,
        database: Database,
        executor: Executor,
        quiet_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._database = database
        self._executor = executor
        self._quiet = timedelta(seconds=quiet_seconds)
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llnm-watcher", daemon=True)

    def tick(self) -> list[int]:
        """One pass; returns the ids of the jobs handed to the executor."""
        now = utcnow()
        with self._database.session() as session:
            queued = queries.queue_settled_jobs(session, settled_before=now - self._quiet)
            due = queries.take_dispatchable_jobs(session, now=now)
        if queued:
            log.info("studies settled; queued jobs %s", queued)
        for job_id in due:
            self._executor.submit(job_id)
        return due

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.tick()
            except SQLAlchemyError as exc:  # boundary: keep watching through an outage
                log.error("completion watcher: database unavailable: %s", exc)

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the current pass."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
