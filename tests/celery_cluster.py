"""The distributed mode on one machine: a node and real ``llnm-node worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_node(self) -> Node:
        """Start the node (migrates the database the workers use)."""
        self.node.start()
        return self.node

    def start_worker(self, name: str, queues: str, *, concurrency: int = 1) -> None:
        """Start ``llnm-node worker --queues queues`` in its own process group."""
        log = (self.root / f"worker-{name}.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLNM_")}
        self.workers[name] = subprocess.Popen(
            [str(LLNM_NODE_EXE), "worker", "--queues", queues, "--concurrency", str(concurrency)],
            env={**env, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(name)

    def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.workers[name].poll() is not None:
                raise RuntimeError(f"worker {name} exited\n{self.log(name)}")
            if " ready." in self.log(name):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not become ready\n{self.log(name)}")

    def log(self, name: str) -> str:
        """The worker's output so far."""
        return (self.root / f"worker-{name}.log").read_text(errors="replace")

    def kill_worker(self, name: str) -> None:
        """kill -9 the worker's whole process group (no warm shutdown, no acknowledgement)."""
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def jobs(self) -> list[listings.JobRow]:
        """Every job, newest first."""
        with self.node.database.session() as session:
            return listings.list_jobs(session)

    def wait_jobs(self, count: int, timeout: float = 180.0) -> list[listings.JobRow]:
        """Wait until ``count`` jobs exist and all are done, failed or dead."""
        deadline = time.monotonic() + timeout
        jobs: list[listings.JobRow] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if len(jobs) == count and all(j.state in {"done", "failed", "dead"} for j in jobs):
                return jobs
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.workers)
        raise AssertionError(f"jobs did not finish: {jobs}\n{logs}")

    def stop(self) -> None:
        """SIGTERM every worker (warm shutdown), then stop the node."""
        for proc in self.workers.values():
            proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.workers.clear()
        self.node.stop()
