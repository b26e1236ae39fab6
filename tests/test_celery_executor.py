"""The distributed mode with real Redis, PostgreSQL and ``llnm-node worker`` processes."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery_cluster import Cluster
from harness import Process, accepts_connections, free_port, wait_for
from test_imaging_jobs import send

from db import listings
from phantoms import make_case

pytestmark = pytest.mark.postgres

SYSTEM_REDIS = "redis://127.0.0.1:6379/7"


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """A node on PostgreSQL and the machine's Redis (database 7, emptied); no workers yet."""
    broker = redis.Redis.from_url(SYSTEM_REDIS)
    broker.flushdb()
    made = Cluster(
        tmp_path,
        database_url=postgres_url,
        broker_url=SYSTEM_REDIS,
        visibility_timeout_s=8,
        stall_timeout_s=120,
    )
    made.start_node()
    yield made
    made.stop()
    broker.flushdb()


def _stage_runs(cluster: Cluster, job_id: int) -> list[str]:
    with cluster.node.database.session() as session:
        events = listings.job_detail(session, job_id=job_id).events
    return [str(e.detail["stage"]) for e in events if e.kind == "stage.started" and e.detail]


def _report_objects(cluster: Cluster, job_id: int) -> list[str]:
    with cluster.node.database.session() as session:
        result = listings.job_detail(session, job_id=job_id).result
    assert result is not None and result.detail is not None
    return [o["sop_instance_uid"] for o in result.detail["objects"]]


def test_messages_carry_only_ids_and_a_study_runs_through_worker_processes(
    cluster: Cluster, tmp_path: Path
) -> None:
    case = make_case(1)
    assert case.report_dataset is not None
    send(cluster.node, [*case.datasets, case.report_dataset], tmp_path / "case")
    broker = redis.Redis.from_url(SYSTEM_REDIS)
    wait_for(lambda: broker.llen("cpu"), timeout=30, what="the node to send a task")
    (raw,) = broker.lrange("cpu", 0, -1)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    message = json.loads(text)
    body = json.loads(base64.b64decode(message["body"]))
    (job,) = cluster.jobs()
    assert body[0] == [job.id, 0, 1]  # job id, first stage, attempt: nothing else
    for phi in [*case.phi, str(case.datasets[0].StudyInstanceUID)]:
        assert phi not in text, phi

    cluster.start_worker("cpu", "cpu")
    cluster.start_worker("gpu", "gpu")
    (done,) = cluster.wait_jobs(1)
    assert done.state == "done", done.error
    assert _stage_runs(cluster, done.id) == [
        "intake",
        "deidentify",
        "crop",
        "segment",
        "features",
        "infer",
        "report",
        "shadow",
    ]
    # The SR, two heatmaps, and two population maps (both views placed on the demo map).
    assert len(_report_objects(cluster, done.id)) == 5
    assert "llnm.stage" in cluster.log("gpu") and "llnm.stage" in cluster.log("cpu")
    stages = sorted((tmp_path / "data" / "spool" / "work" / f"job-{done.id}" / "stages").iterdir())
    assert [p.name for p in stages] == [
        "00-intake",
        "01-deidentify",
        "02-crop",
        "03-segment",
        "04-features",
        "05-infer",
        "06-report",  # the shadow stage, last, leaves none
    ]
    assert all((p / "output.json").is_file() for p in stages)  # JSON and .npy, no pickle


def test_a_gpu_worker_killed_mid_stage_hands_its_task_to_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_worker("cpu", "cpu")
    cluster.start_worker("gpu-a", "gpu")
    case = make_case(2)
    send(cluster.node, [*case.datasets], tmp_path / "case")
    cluster.wait_for_a_job(lambda j: j.stage == "segment", "a job in the segment stage", 0.02)
    cluster.kill_worker("gpu-a")  # while it loads the models or segments
    cluster.start_worker("gpu-b", "gpu")
    (job,) = cluster.wait_jobs(1)
    assert job.state == "done", job.error
    with cluster.node.database.session() as session:
        assert listings.job_detail(session, job_id=job.id).job.attempts == 1  # redelivered
    runs = _stage_runs(cluster, job.id)
    assert runs.count("segment") == 2 and runs.count("report") == 1, runs
    assert "llnm.stage" in cluster.log("gpu-b")
    with cluster.node.database.session() as session:
        result = listings.job_detail(session, job_id=job.id).result
    assert result is not None and result.detail is not None
    views = len(result.detail["views"])  # the scope gate may decline a view
    made = len(set(_report_objects(cluster, job.id)))  # SR, heatmaps, population maps
    assert views >= 1 and 1 + views <= made <= 1 + 2 * views


def _redis_server(port: int, log: Path) -> Process:
    server = Process(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], log_path=log
    ).start()
    server.wait_until(
        lambda: accepts_connections(port), timeout=10, what="redis-server", interval=0.05
    )
    return server


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is missing")
def test_redis_restarted_mid_run_loses_no_study(tmp_path: Path, postgres_url: str) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path / "redis.log")
    cluster = Cluster(
        tmp_path / "cluster",
        database_url=postgres_url,
        broker_url=f"redis://127.0.0.1:{port}/0",
        visibility_timeout_s=8,
        stall_timeout_s=10,
    )
    try:
        node = cluster.start_node()
        cluster.start_worker("all", "gpu,cpu")
        send(node, [*make_case(3).datasets], tmp_path / "first")
        cluster.wait_for_a_job(lambda j: j.state == "running", "a running job", 0.05)
        server.kill()  # no persistence: whatever was queued is gone
        send(node, [*make_case(4).datasets], tmp_path / "second")  # the node keeps accepting
        time.sleep(2.0)
        server = _redis_server(port, tmp_path / "redis.log")
        jobs = cluster.wait_jobs(2, timeout=240)
    finally:
        cluster.stop()
        server.kill()
    assert [j.state for j in jobs] == ["done", "done"], jobs
