"""Executors: where jobs run. The embedded default is a thread pool in the node's process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pipeline.runner import JobRunner

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Something that runs jobs by id, somewhere."""

    def submit(self, job_id: int) -> None:
        """Start job ``job_id`` eventually; must not block on the job itself."""

    def shutdown(self, *, wait: bool) -> None:
        """Stop taking jobs; with ``wait``, let the running ones finish."""


class InProcessExecutor:
    """A thread pool in this process, one job per worker thread.

    ``finished`` is called after each run, whatever its end (e.g. to wake the exporter).
    """

    def __init__(
        self, runner: JobRunner, *, workers: int, finished: Callable[[], None] | None = None
    ) -> None:
        self._runner = runner
        self._finished = finished
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llnm-job")
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()

    def submit(self, job_id: int) -> None:
        """Queue the job on the pool (a job already queued here is not queued twice)."""
        with self._lock:
            if job_id in self._in_flight:
                return
            self._in_flight.add(job_id)
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        try:
            self._runner.run(job_id)
        except Exception:  # boundary: a database outage must not kill the worker thread
            log.exception("job %d could not be run; the next start recovers it", job_id)
        finally:
            with self._lock:
                self._in_flight.discard(job_id)
            if self._finished is not None:
                self._finished()

    def shutdown(self, *, wait: bool) -> None:
        """Stop the pool; jobs not yet started stay queued in the database."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
