"""The admin REST API over real HTTP to running nodes, with real jobs from phantom studies."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import schemathesis
from harness import wait_for
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import RLELossless
from schemathesis import checks as st_checks
from schemathesis.core.result import Ok
from test_db_queries import new_instance, register
from test_imaging_jobs import Factory, finished_jobs, send
from test_report_stage import PACS_AE, _delivered, _send_as_pacs
from typer.testing import CliRunner

from db import exports, jobs, listings, metrics
from db.models import CompletionRule, ExportState, JobState, utcnow
from db.session import Database
from dicom_node.api.auth import Caller, identify, new_token, token_digest
from dicom_node.app.demo import DemoPacs
from dicom_node.app.node import Node
from dicom_node.cli import main as cli
from dicom_node.settings import ApiToken
from phantoms import make_case
from pipeline.runner import JobRunner, RetryPolicy
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage

TOKEN = new_token()
TOKEN_NAME = "ops-alice"
API = {"tokens": [{"name": TOKEN_NAME, "sha256": token_digest(TOKEN)}], "openapi": True}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client() -> Iterator[Any]:
    """httpx clients on a node's API, closed at teardown."""
    clients: list[httpx.Client] = []

    def make(node: Node, token: str | None = TOKEN) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        clients.append(
            httpx.Client(base_url=f"http://127.0.0.1:{node.api_port}", headers=headers, timeout=30)
        )
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _paths(client: httpx.Client) -> list[str]:
    """Every GET/POST path of the schema with its parameters filled in."""
    schema = client.get("/openapi.json", headers=BEARER).json()
    return [
        path.replace("{job_id}", "1").replace("{sop_instance_uid}", "1.2").replace("{n}", "1")
        for path in schema["paths"]
    ]


def test_health_needs_no_token_and_everything_else_does(
    node_factory: Factory, make_client: Any
) -> None:
    node = node_factory(api=API)
    anonymous, wrong = make_client(node, None), make_client(node, "not-the-token")
    assert anonymous.get("/health").json() == {"status": "ok"}
    ready = anonymous.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert {c["name"]: c["ok"] for c in ready.json()["checks"]} == {
        "database": True,
        "spool": True,
        "model_bundle": True,
    }
    paths = [p for p in _paths(anonymous) if not p.startswith("/health")]
    assert {"/api/v1/jobs", "/api/v1/studies", "/api/v1/exports", "/metrics"} <= set(paths)
    for client in (anonymous, wrong):
        assert client.get("/metrics").status_code == 401
        for path in paths:
            method = (
                client.post if path.endswith(("/retry", "/cancel", "/outcomes")) else client.get
            )
            response = method(path)
            assert response.status_code == 401, (path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"


def test_readiness_fails_when_the_bundle_manifest_is_unreadable(
    node_factory: Factory, make_client: Any, tmp_path: Path
) -> None:
    node = node_factory(api=API, model={"bundle_dir": tmp_path / "no-bundle"})
    ready = make_client(node, None).get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    failing = [c for c in ready.json()["checks"] if not c["ok"]]
    assert [c["name"] for c in failing] == ["model_bundle"]
    assert make_client(node).get("/api/v1/bundle").status_code == 503


def _events(client: httpx.Client, job_id: int, kind: str) -> list[dict[str, Any]]:
    events = client.get(f"/api/v1/jobs/{job_id}").json()["events"]
    return [e for e in events if e["kind"] == kind]


def test_a_study_its_result_files_exports_metrics_and_retries(
    node_factory: Factory, make_client: Any, tmp_path: Path
) -> None:
    pacs = DemoPacs(tmp_path / "pacs")
    destination = {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs.start()}
    node = node_factory(
        api=API,
        export={"destinations": [destination], "initial_backoff_s": 0.1, "poll_seconds": 0.1},
    )
    client = make_client(node)
    try:
        case = make_case(3)
        _send_as_pacs(node, [*case.datasets], tmp_path / "case")
        (job,) = finished_jobs(node, 1, timeout=120)
        assert job.state == "done", job.error
        with node.database.session() as session:
            result = listings.job_detail(session, job_id=job.id).result
        assert result is not None and result.detail is not None
        objects = len(result.detail["objects"])  # the SR and one SC per view used
        _delivered(node, pacs, objects)
        _check_lists(client, job, objects)
        _check_detail_and_files(client, node, job.id)
        _check_metrics(client, node, objects)
        _check_retry_of_dead_exports(client, node, job.id, objects)
    finally:
        pacs.stop()
    bundle = client.get("/api/v1/bundle").json()
    assert bundle["name"] == "llnm-demo" and bundle["synthetic"] is True
    assert bundle["clinical_use_label"] == "NOT FOR CLINICAL USE" and bundle["verified"] is True
    assert 0 <= bundle["metrics"]["llnm"]["auc"] <= 1


def _check_lists(client: httpx.Client, job: listings.JobRow, objects: int) -> None:
    jobs = client.get("/api/v1/jobs", params={"state": ["done", "failed"]}).json()
    assert jobs["total"] == 1 and jobs["items"][0]["id"] == job.id
    assert jobs["items"][0]["patient_pseudonym"] == job.patient_pseudonym
    for params in (
        {"state": "queued"},
        {"ae": "SOMEONE_ELSE"},
        {"patient": "P-NOBODY"},
        {"since": "2999-01-01T00:00:00"},
        {"until": "2000-01-01T00:00:00+02:00"},
    ):
        assert client.get("/api/v1/jobs", params=params).json()["total"] == 0, params
    matching = {"ae": PACS_AE, "patient": job.patient_pseudonym, "since": "2000-01-01"}
    assert client.get("/api/v1/jobs", params=matching).json()["total"] == 1
    page = client.get("/api/v1/jobs", params={"limit": 1, "offset": 1}).json()
    assert page == {"total": 1, "limit": 1, "offset": 1, "items": []}
    studies = client.get("/api/v1/studies", params={"state": "done", "ae": PACS_AE}).json()
    assert studies["total"] == 1
    assert studies["items"][0]["latest_job_id"] == job.id
    assert client.get("/api/v1/studies", params={"state": "running"}).json()["total"] == 0
    assert client.get("/api/v1/studies", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/jobs", params={"limit": 501}).status_code == 422
    assert client.get("/api/v1/jobs", params={"state": "lost"}).status_code == 422
    assert client.get("/api/v1/jobs", params={"since": "yesterday"}).status_code == 422
    sent = client.get("/api/v1/exports", params={"job": job.id, "state": "sent"}).json()
    assert sent["total"] == objects and {e["destination"] for e in sent["items"]} == {"pacs"}
    assert client.get("/api/v1/exports", params={"state": "dead"}).json()["total"] == 0


def _check_detail_and_files(client: httpx.Client, node: Node, job_id: int) -> None:
    detail = client.get(f"/api/v1/jobs/{job_id}").json()
    assert detail["job"]["state"] == "done"
    stages = [e["detail"]["stage"] for e in detail["events"] if e["kind"] == "stage.done"]
    assert stages[-2:] == ["report", "shadow"] and "infer" in stages
    assert detail["shadow"] == []  # no shadow bundle installed
    result = detail["result"]
    assert 0 <= result["probability"] <= 1 and result["risk_stage"] in (1, 2, 3)
    assert result["positive"] == (result["probability"] >= result["threshold"])
    assert result["bundle_name"] == "llnm-demo" and result["synthetic_bundle"] is True
    assert result["clinical_use_label"] == "NOT FOR CLINICAL USE"
    assert sum(result["contributions"].values()) == pytest.approx(100, abs=0.5)
    kinds = [o["kind"] for o in result["objects"]]
    assert kinds[0] == "sr" and set(kinds[1:]) == {"sc"}
    with node.database.session() as session:
        listed = listings.job_detail(session, job_id=job_id).result
    assert listed is not None and listed.detail is not None
    paths = {o["sop_instance_uid"]: o["path"] for o in listed.detail["objects"]}
    for obj in result["objects"]:
        response = client.get(obj["href"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom"
        assert (
            response.content
            == (node.spool.layout.root / paths[obj["sop_instance_uid"]]).read_bytes()
        )
        assert dcmread(BytesIO(response.content)).SOPInstanceUID == obj["sop_instance_uid"]
    assert client.get(f"/api/v1/jobs/{job_id}/objects/1.2.3.4").status_code == 404
    # One heatmap SC per view, and one population map SC per view placed on the map.
    assert len(kinds) - 1 == 2 * len(result["heatmaps"]) == 4
    for href in result["heatmaps"]:
        png = client.get(href)
        assert png.headers["content-type"] == "image/png"
        image = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.ndim == 3
    assert client.get(f"/api/v1/jobs/{job_id}/heatmaps/{len(kinds)}").status_code == 404
    assert client.get("/api/v1/jobs/999999").status_code == 404
    assert client.get("/api/v1/jobs/999999/heatmaps/1").status_code == 404
    assert "PatientName" not in str(detail) and "PatientID" not in str(detail)


def _samples(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _check_metrics(client: httpx.Client, node: Node, objects: int) -> None:
    samples = _samples(client)
    with node.database.session() as session:
        counts = metrics.node_counts(session)
    assert samples[("llnm_instances_received_total", frozenset())] == counts.instances_stored == 2
    for state in JobState:
        expected = 1 if state == JobState.DONE else 0
        assert samples[("llnm_jobs", frozenset({("state", state.value)}))] == expected
    for export_state in ExportState:
        expected = objects if export_state == ExportState.SENT else 0
        assert samples[("llnm_exports", frozenset({("state", export_state.value)}))] == expected
    for failure in ("failed", "dead"):
        assert samples[("llnm_job_failures_total", frozenset({("state", failure)}))] == 0
    for rule in CompletionRule:  # no caller to ask: the quiet time completed the study
        expected = 1 if rule == CompletionRule.QUIET_TIME else 0
        assert (
            samples[("llnm_study_completions_total", frozenset({("rule", rule.value)}))] == expected
        )
    for stage in ("intake", "deidentify", "crop", "segment", "features", "infer", "report"):
        labels = frozenset({("stage", stage)})
        assert samples[("llnm_stage_duration_seconds_count", labels)] == 1
        assert samples[("llnm_stage_duration_seconds_bucket", labels | {("le", "+Inf")})] == 1
        assert samples[("llnm_stage_duration_seconds_sum", labels)] > 0


def _check_retry_of_dead_exports(
    client: httpx.Client, node: Node, job_id: int, objects: int
) -> None:
    assert client.post(f"/api/v1/jobs/{job_id}/retry").status_code == 409  # nothing to retry
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409  # already done
    assert client.post("/api/v1/jobs/999999/retry").status_code == 404
    with node.database.session() as session:
        for row in exports.list_exports(session, job_id=job_id):
            exports.mark_dead(session, export_id=row.id, error="test: destination lost it")
    assert client.get("/api/v1/exports", params={"state": "dead"}).json()["total"] == objects
    retried = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["action"] == "exports_queued"
    assert retried.json()["exports_queued"] == objects
    (audit,) = _events(client, job_id, "export.retry")
    assert audit["detail"]["actor"] == TOKEN_NAME and TOKEN_NAME in audit["message"]
    wait_for(
        lambda: client.get("/api/v1/exports", params={"state": "sent"}).json()["total"] >= objects,
        timeout=30,
        what="the retried exports to be sent",
    )


def test_retry_of_a_failed_job_is_audited_with_the_token_name(
    node_factory: Factory, make_client: Any, tmp_path: Path
) -> None:
    node = node_factory(api=API)
    client = make_client(node)
    broken = make_case(11).datasets[0]
    broken.compress(RLELossless)
    stream = bytearray(broken.PixelData)
    stream[200:-200] = bytes(len(stream) - 400)
    broken.PixelData = bytes(stream)
    send(node, [broken], tmp_path / "broken")
    (failed,) = finished_jobs(node, 1)
    assert failed.state == "failed"
    assert client.get("/metrics").text.count('llnm_job_failures_total{state="failed"} 1.0') == 1
    retried = client.post(f"/api/v1/jobs/{failed.id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["action"] == "job_queued" and retried.json()["exports_queued"] == 0
    (audit,) = _events(client, failed.id, "job.retry_requested")
    assert audit["detail"]["actor"] == TOKEN_NAME
    (again,) = finished_jobs(node, 1)
    assert again.state == "failed"  # the same broken input fails again


def test_cancel_a_queued_job(node_factory: Factory, make_client: Any, tmp_path: Path) -> None:
    node = node_factory(api=API, completion={"quiet_seconds": 3600, "poll_seconds": 3600})
    client = make_client(node)
    send(node, [make_case(4).datasets[0]], tmp_path / "case")
    with node.database.session() as session:
        (job_id,) = jobs.queue_settled_jobs(session, settled_before=utcnow())
    assert client.get(f"/api/v1/jobs/{job_id}").json()["job"]["state"] == "queued"
    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    (audit,) = _events(client, job_id, "job.cancelled")
    assert audit["detail"] == {"actor": TOKEN_NAME, "was": "queued"}
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    node.executor.submit(job_id)  # a worker that still got it skips it
    time.sleep(0.3)
    listed = client.get("/api/v1/jobs", params={"state": "cancelled"}).json()
    assert [j["id"] for j in listed["items"]] == [job_id]


def test_a_running_job_stops_before_its_next_stage_when_cancelled(
    database: Database, tmp_path: Path
) -> None:
    job_id = register(database, new_instance("7.1")).job_id
    with database.session() as session:
        jobs.queue_settled_jobs(session, settled_before=utcnow())
    ran: list[str] = []

    def cancel(value: object) -> object:
        ran.append("first")
        with database.session() as session:
            jobs.cancel_job(session, job_id=job_id, requested_by="bob")
        return value

    def second(value: object) -> object:
        ran.append("second")
        return value

    runner = JobRunner(
        database=database,
        spool=SpoolLayout.at(tmp_path),
        stages=[
            Stage[object, object](name="first", run=cancel, summarize=lambda _: {}),
            Stage[object, object](name="second", run=second, summarize=lambda _: {}),
        ],
        retry=RetryPolicy(),
    )
    runner.run(job_id)
    assert ran == ["first"]
    with database.session() as session:
        detail = listings.job_detail(session, job_id=job_id)
    assert detail.job.state == "cancelled"
    assert [e.kind for e in detail.events if e.kind.startswith(("stage.", "job.done"))] == [
        "stage.started"
    ]


def test_node_counts_on_the_database(database: Database) -> None:
    job_id = register(database, new_instance("8.1")).job_id
    with database.session() as session:
        for stage, seconds in (("crop", 0.2), ("crop", 7.0), ("infer", 400.0)):
            jobs.complete_stage(session, job_id=job_id, stage=stage, seconds=seconds, summary={})
    with database.session() as session:
        counts = metrics.node_counts(session)
    assert counts.instances_stored == 1 and counts.jobs_by_state[JobState.RECEIVED] == 1
    crop, infer = counts.stage_durations
    assert (crop.stage, crop.count) == ("crop", 2) and crop.total_seconds == pytest.approx(7.2)
    assert dict(crop.buckets)[0.25] == 1 and dict(crop.buckets)[10.0] == 2
    assert infer.count == 1 and dict(infer.buckets)[300.0] == 0


def test_the_schema_holds_for_generated_requests(
    node_factory: Factory, make_client: Any, tmp_path: Path
) -> None:
    node = node_factory(api=API)
    send(node, [make_case(5).datasets[0]], tmp_path / "case")
    finished_jobs(node, 1, timeout=120)
    base_url = f"http://127.0.0.1:{node.api_port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    response_checks = [
        st_checks.not_a_server_error,
        st_checks.status_code_conformance,
        st_checks.content_type_conformance,
        st_checks.response_schema_conformance,
        st_checks.response_headers_conformance,
    ]
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 10
    for operation in operations:

        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=response_checks)

        call()


def test_api_token_prints_a_token_and_the_settings_entry_that_admits_it() -> None:
    result = CliRunner().invoke(cli.app, ["api-token", "ops-bob"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    entry = tomllib.loads("\n".join(lines[2:]))["api"]["tokens"][0]
    assert identify(token, [ApiToken(**entry)]) == Caller("ops-bob")
    assert CliRunner().invoke(cli.app, ["api-token", ""]).exit_code == 2
