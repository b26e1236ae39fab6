"""Jobs per minute: the embedded default against Celery workers, on this machine.

Each configuration gets a fresh PostgreSQL database and an emptied Redis
database, starts its workers, then receives ``--studies`` phantom studies (two
views and a report SR each) at once; the clock runs from the first C-STORE to
the last job done. Configurations:

* ``in-process``: the embedded default, one worker thread in the node;
* ``celery 1 cpu``: one ``--queues gpu`` worker (on the CPU here, CUDA when
  present) and one ``--queues cpu`` worker;
* ``celery 2 cpu``: the same with two cpu workers.

Run::

    .venv/bin/python benchmarks/distributed_throughput.py [--studies 12]
        [--out benchmarks/out/distributed_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from celery_cluster import Cluster
from report_cases import write_case
from test_imaging_jobs import finished_jobs

from dicom_node.app.node import Node
from dicom_node.network import scu
from dicom_node.settings import Settings
from phantoms import make_case

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BROKER = "redis://127.0.0.1:6379/8"
FIRST_SEED = 7000
TIMEOUT_S = 900.0
# Name -> cpu workers (None: the embedded default, no Celery).
CONFIGURATIONS: dict[str, int | None] = {"in-process": None, "celery 1 cpu": 1, "celery 2 cpu": 2}


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"llnm_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def corpus(root: Path, studies: int) -> list[Path]:
    paths: list[Path] = []
    for seed in range(FIRST_SEED, FIRST_SEED + studies):
        paths += write_case(make_case(seed), root / str(seed))
    return paths


def send_and_wait(node: Node, paths: list[Path], studies: int) -> float:
    peer = scu.Peer(host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title)
    started = time.monotonic()
    if not all(o.ok for o in scu.send_files(peer, paths)):
        raise RuntimeError("the node refused a phantom instance")
    jobs = finished_jobs(node, studies, timeout=started + TIMEOUT_S - time.monotonic())
    if any(j.state != "done" for j in jobs):
        raise RuntimeError(f"jobs did not succeed: {jobs}")
    return time.monotonic() - started


def in_process(root: Path, paths: list[Path], studies: int) -> float:
    with fresh_database() as url:
        node = Node(
            Settings(
                data_dir=root,
                database_url=url,
                min_free_disk_mb=50,
                dicom={"host": "127.0.0.1", "port": 0},
                completion={"quiet_seconds": 0.5, "poll_seconds": 0.1},
                api={"port": 0},
            )
        )
        node.start()
        try:
            return send_and_wait(node, paths, studies)
        finally:
            node.stop()


def celery(root: Path, paths: list[Path], studies: int, cpu_workers: int) -> float:
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()
    with fresh_database() as url:
        cluster = Cluster(root, database_url=url, broker_url=BROKER)
        try:
            cluster.start_node()
            cluster.start_worker("gpu", "gpu")
            for n in range(cpu_workers):
                cluster.start_worker(f"cpu{n}", "cpu")
            return send_and_wait(cluster.node, paths, studies)
        finally:
            cluster.stop()
            broker.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/out/distributed_throughput.json")
    )
    args = parser.parse_args()
    console = Console()
    results: dict[str, Any] = {"studies": args.studies}
    with tempfile.TemporaryDirectory(prefix="llnm-dist-") as scratch:
        root = Path(scratch)
        paths = corpus(root / "corpus", args.studies)
        for name, cpu_workers in CONFIGURATIONS.items():
            console.print(f"running {name} ...")
            folder = root / name.replace(" ", "-")
            seconds = (
                in_process(folder, paths, args.studies)
                if cpu_workers is None
                else celery(folder, paths, args.studies, cpu_workers)
            )
            results[name] = {"seconds": seconds, "jobs_per_min": 60 * args.studies / seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    table = Table("configuration", "seconds", "jobs/min", title=f"{args.studies} studies at once")
    for name in CONFIGURATIONS:
        table.add_row(
            name, f"{results[name]['seconds']:.1f}", f"{results[name]['jobs_per_min']:.1f}"
        )
    console.print(table)


if __name__ == "__main__":
    main()
