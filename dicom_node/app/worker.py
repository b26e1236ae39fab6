"""``llnm-node worker``: a Celery worker process for the distributed mode.

It runs the stages of the queues it is given (``gpu``: segment and infer,
``cpu``: the rest and the notices) on jobs the node hands out through the
broker, reading and writing the shared spool and the job database. Models are
loaded once per process on first use and stay loaded; the device is CUDA when
present. Tasks run in threads (``--concurrency``) so that one process holds
one copy of the models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from db.session import Database
from dicom_node.app.wiring import distributed_app, job_runner, local_notices
from dicom_node.settings import Settings
from imaging.dicom_files import keep_header_values_out_of_logs
from pipeline.celery_executor import QueuedNotices, WorkerTasks, register_tasks

QUEUES = ("gpu", "cpu")


def run_worker(settings: Settings, queues: Sequence[str], *, concurrency: int) -> None:
    """Serve ``queues`` until the process is told to stop (SIGTERM: warm shutdown).

    Raises
    ------
    ValueError
        If no broker is configured or a queue name is unknown.
    """
    unknown = set(queues) - set(QUEUES)
    if unknown or not queues:
        raise ValueError(f"queues must be among {', '.join(QUEUES)}; got {', '.join(queues)}")
    app = distributed_app(settings)
    if app is None:
        raise ValueError("executor.broker_url is not set: a worker needs the broker")
    keep_header_values_out_of_logs()
    database = Database(settings.resolved_database_url)
    runner = job_runner(settings, database, notices=QueuedNotices(app))
    register_tasks(
        app, WorkerTasks(runner=runner, notices=local_notices(settings), database=database)
    )
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "threads",
            "--loglevel",
            settings.log_level,
            "--hostname",
            f"llnm-{'-'.join(queues)}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
