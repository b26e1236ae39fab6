"""The distributed executor: each stage of a job is a Celery task on its stage's queue.

Messages carry only ``(job id, stage index, attempt)``: no paths, no patient data.
A stage's output goes to the next stage's worker through the shared spool
(:meth:`SpoolLayout.stage_output`, :mod:`pipeline.stage_outputs`), read back
as the stage's ``output_type``; a planted or corrupt folder only fails to
load, and the job is retried from its first stage. The node claims a job and
sends its first stage; each worker runs one stage, saves its output, and sends the next stage
to that stage's queue (``gpu`` for segment and infer, ``cpu`` for the rest).

Delivery
    Tasks are acknowledged late and re-queued when their worker is lost
    (``acks_late``, ``reject_on_worker_lost``; on Redis an unacknowledged task
    returns after ``executor.visibility_timeout_s``). Running a stage again is
    harmless: outputs are overwritten, results replaced, result objects keep
    their UIDs and the export sends each once. A task of an older attempt of a
    job, or of a job that is no longer running, is dropped.
Failures
    Stage errors go through :meth:`JobRunner.fail` as in-process: a bad input
    fails the job, other errors re-queue it from its first stage with backoff
    until ``executor.max_attempts``, then it is dead. Notices (failure and
    no-nodule SRs) read the original images, so they are made on the ``cpu``
    queue (:class:`QueuedNotices`), never on a gpu worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from db import jobs
from db.session import Database
from pipeline.runner import JobNotices, JobRunner
from pipeline.stage import Stage
from pipeline.stage_outputs import load_output, save_output

log = logging.getLogger(__name__)

STAGE_TASK = "llnm.stage"
NOTICE_TASK = "llnm.notice"
NOTICE_QUEUE = "cpu"


def celery_app(broker_url: str, *, visibility_timeout_s: float) -> Celery:
    """The Celery application both the node and the workers use."""
    app = Celery("llnm", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=NOTICE_QUEUE,
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    return app


def _output_type(stage: Stage[Any, Any]) -> type[Any]:
    """The type ``stage``'s output is saved and loaded as between workers."""
    if stage.output_type is None:
        raise ValueError(f"stage {stage.name} declares no output_type: it cannot run on workers")
    return stage.output_type


def _previous_output(runner: JobRunner, job_id: int, index: int) -> Any:
    """The output stage ``index - 1`` of job ``job_id`` left in the spool."""
    previous = runner.stages[index - 1]
    directory = runner.spool.stage_output(job_id, index - 1, previous.name)
    return load_output(directory, _output_type(previous), root=runner.spool.root)


def send_stage(app: Celery, runner: JobRunner, job_id: int, index: int, attempt: int) -> None:
    """Queue stage ``index`` of attempt ``attempt`` of job ``job_id`` on its stage's queue."""
    app.send_task(STAGE_TASK, args=[job_id, index, attempt], queue=runner.stages[index].queue)


class CeleryExecutor:
    """The node's side: claims a job and sends its first stage to the workers."""

    def __init__(self, app: Celery, runner: JobRunner, database: Database) -> None:
        self._app = app
        self._runner = runner
        self._database = database

    def submit(self, job_id: int) -> None:
        """Claim the job and queue its first stage; with the broker down it stays queued."""
        attempt = self._runner.claim(job_id)
        if attempt is None:
            return
        try:
            send_stage(self._app, self._runner, job_id, 0, attempt)
        except Exception as exc:  # boundary: kombu raises many kinds when the broker is down
            log.error("job %d not handed to the workers: %s", job_id, exc)
            with self._database.session() as session:
                jobs.release_claim(session, job_id=job_id, reason=f"{type(exc).__name__}")

    def shutdown(self, *, wait: bool) -> None:
        """Nothing runs in the node; the workers go on with what they have."""


def run_stage_task(app: Celery, runner: JobRunner, job_id: int, index: int, attempt: int) -> str:
    """A worker's part: run one stage and send the next; returns what happened."""
    if not runner.is_current(job_id, attempt):
        log.info("job %d: stage %d of attempt %d is stale; dropped", job_id, index, attempt)
        return "stale"
    stages = runner.stages
    try:
        value: Any = (
            runner.study_input(job_id) if index == 0 else _previous_output(runner, job_id, index)
        )
    except Exception as exc:  # boundary: a lost or unreadable output re-runs the job
        runner.fail(job_id, stages[index].name, f"input not readable: {exc}", permanent=False)
        return "failed"
    step = runner.run_stage(job_id, index, value)
    if step.concluded:
        runner.after_conclusion(job_id, index)
    if step.ended:
        return "ended"
    if index + 1 == len(stages):
        runner.finish(job_id)
        return "done"
    directory = runner.spool.stage_output(job_id, index, stages[index].name)
    save_output(directory, step.value, root=runner.spool.root)
    send_stage(app, runner, job_id, index + 1, attempt)
    return "next"


class QueuedNotices:
    """Hands notices to the ``cpu`` queue, where a worker makes them (:class:`JobNotices`)."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def failed(self, session: Session, job_id: int, error: str) -> None:
        """Queue the failure notice of job ``job_id``."""
        self._app.send_task(NOTICE_TASK, args=[job_id, "failed", error], queue=NOTICE_QUEUE)

    def concluded(self, session: Session, job_id: int, outcome: str) -> None:
        """Queue the notice of a job that ended early with ``outcome``."""
        self._app.send_task(NOTICE_TASK, args=[job_id, "concluded", outcome], queue=NOTICE_QUEUE)


@dataclass(frozen=True)
class WorkerTasks:
    """What a worker process runs its tasks with (built once, so models stay loaded)."""

    runner: JobRunner
    notices: JobNotices
    database: Database


def register_tasks(app: Celery, tasks: WorkerTasks) -> None:
    """Register the stage and notice tasks on ``app`` for a worker process.

    Raises
    ------
    ValueError
        If a stage before the last declares no ``output_type``.
    """
    for earlier in tasks.runner.stages[:-1]:
        _output_type(earlier)

    @app.task(name=STAGE_TASK)  # type: ignore[untyped-decorator]
    def stage(job_id: int, index: int, attempt: int) -> str:
        return run_stage_task(app, tasks.runner, job_id, index, attempt)

    @app.task(name=NOTICE_TASK)  # type: ignore[untyped-decorator]
    def notice(job_id: int, kind: str, text: str) -> None:
        with tasks.database.session() as session:
            if kind == "failed":
                tasks.notices.failed(session, job_id, text)
            else:
                tasks.notices.concluded(session, job_id, text)
