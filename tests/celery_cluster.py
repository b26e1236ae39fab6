"""The distributed mode on one machine: a node and real ``llnm-node worker`` processes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Process, environ_without, stop_all, wait_for
from test_imaging_jobs import finished_jobs

from db import listings
from dicom_node.app.node import Node
from dicom_node.settings import Settings

LLNM_NODE_EXE = Path(sys.executable).with_name("llnm-node")
WORKER_READY_TIMEOUT_S = 90.0


class Cluster:
    """One node (in this process) and worker processes sharing its spool and database."""

    def __init__(self, root: Path, *, database_url: str, broker_url: str, **executor: Any) -> None:
        self.root = root
        self.env = {
            "LLNM_DATA_DIR": str(root / "data"),
            "LLNM_DATABASE_URL": database_url,
            "LLNM_EXECUTOR__BROKER_URL": broker_url,
            "LLNM_MIN_FREE_DISK_MB": "5",
            "LLNM_LOG_LEVEL": "INFO",
            **{f"LLNM_EXECUTOR__{k.upper()}": str(v) for k, v in executor.items()},
        }
        self.settings = Settings(
            data_dir=root / "data",
            database_url=database_url,
            min_free_disk_mb=5,
            dicom={"host": "127.0.0.1", "port": 0},
            completion={"quiet_seconds": 0.5, "poll_seconds": 0.1},
            api={"port": 0},
            executor={"broker_url": broker_url, **executor},
        )
        self.node = Node(self.settings)
        self.workers: dict[str, Process] = {}

    def start_node(self) -> Node:
        """Start the node (migrates the database the workers use)."""
        self.node.start()
        return self.node

    def start_worker(self, name: str, queues: str, *, concurrency: int = 1) -> None:
        """Start ``llnm-node worker --queues queues`` in its own process group; wait until ready."""
        worker = Process(
            [str(LLNM_NODE_EXE), "worker", "--queues", queues, "--concurrency", str(concurrency)],
            log_path=self.root / f"worker-{name}.log",
            env={**environ_without("LLNM_"), **self.env},
            own_session=True,
        )
        self.workers[name] = worker.start()
        worker.wait_until(
            lambda: " ready." in worker.log(),
            timeout=WORKER_READY_TIMEOUT_S,
            what=f"worker {name} to be ready",
        )

    def log(self, name: str) -> str:
        """The worker's output so far."""
        return self.workers[name].log()

    def kill_worker(self, name: str) -> None:
        """kill -9 the worker's whole process group (no warm shutdown, no acknowledgement)."""
        self.workers[name].kill()

    def jobs(self) -> list[listings.JobRow]:
        """Every job, newest first."""
        with self.node.database.session() as session:
            return listings.list_jobs(session)

    def wait_for_a_job(
        self, matches: Callable[[listings.JobRow], bool], what: str, interval: float
    ) -> None:
        """Wait up to 60 s until some job ``matches``."""
        wait_for(
            lambda: any(matches(job) for job in self.jobs()),
            timeout=60,
            what=what,
            interval=interval,
            describe=lambda: f"jobs: {self.jobs()}",
        )

    def wait_jobs(self, count: int, timeout: float = 180.0) -> list[listings.JobRow]:
        """Wait until ``count`` jobs exist and all are done, failed or dead."""

        def logs() -> str:
            return "\n".join(f"--- {n}\n{w.log()[-3000:]}" for n, w in self.workers.items())

        return finished_jobs(self.node, count, timeout, describe=logs)

    def stop(self) -> None:
        """SIGTERM every worker (warm shutdown; SIGKILL after 30 s), then stop the node."""
        stop_all(self.workers.values())
        self.workers.clear()
        self.node.stop()
