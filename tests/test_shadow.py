"""Shadow mode on a running node: a live and a shadow bundle on each study, then a promotion.

Real node (C-STORE over a socket, the embedded executor, the job database),
a real PACS to export to, two real sealed bundles (the demo bundle and a
resealed copy under another version, installed into the node's store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from test_api import API, TOKEN, make_client  # noqa: F401 (a fixture)
from test_bundle_registry import make_bundle
from test_imaging_jobs import Factory, finished_jobs
from test_report_stage import PACS_AE, _delivered, _send_as_pacs

from db import exports, listings
from db.bundles import set_role, shadow_bundles
from db.models import BundleRole, Event
from dicom_node.app.bundles import install_bundle
from dicom_node.app.demo import DemoPacs
from dicom_node.app.node import Node
from models.bundle import bundle_digest
from models.demo import DEMO_BUNDLE_DIR
from phantoms import make_case
from pipeline.shadow import FAILED

CHALLENGER = "2.0-challenger"
BUNDLE_NAME = "llnm-demo"


def _detail(node: Node, job_id: int) -> listings.JobDetail:
    with node.database.session() as session:
        return listings.job_detail(session, job_id=job_id)


def _exported_versions(node: Node, pacs: DemoPacs, job_id: int) -> set[str]:
    """The bundle versions named by the objects the node exported for ``job_id``."""
    with node.database.session() as session:
        rows = [r for r in exports.list_exports(session) if r.job_id == job_id]
    versions = set()
    for row in rows:
        for item in dcmread(pacs.received[row.sop_instance_uid]).ContributingEquipmentSequence:
            if item.get("ManufacturerModelName") == BUNDLE_NAME:
                versions.add(str(item.SoftwareVersions))
    return versions


def _check_dashboard(node: Node, job_id: int, sha256: str) -> None:
    url = f"http://127.0.0.1:{node.api_port}"
    with httpx.Client(base_url=url, headers={"Origin": url}) as browser:
        assert browser.post("/ui/login", data={"token": TOKEN}).status_code == 303
        page = browser.get(f"/ui/jobs/{job_id}").text
    table = page[page.index('id="shadow"') :]
    assert "never sent to the PACS" in table and sha256[:12] in table
    assert f"llnm-demo {CHALLENGER}" in table and "predicted" in table
    with httpx.Client(base_url=url, headers={"Origin": url}) as browser:
        browser.post("/ui/login", data={"token": TOKEN})
        card = browser.get("/ui/bundle").text
    installed = card[card.index('id="installed-bundles"') :]
    assert 'data-role="shadow"' in installed and sha256[:12] in installed


def test_shadow_answers_are_kept_never_exported_and_a_promotion_takes_the_next_study(
    node_factory: Factory,
    make_client: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    pacs = DemoPacs(tmp_path / "pacs")
    destination = {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs.start()}
    node = node_factory(
        api=API,
        export={"destinations": [destination], "initial_backoff_s": 0.1, "poll_seconds": 0.1},
    )
    store = node.settings.data_dir / "bundles"
    try:
        with node.database.session() as session:
            live = install_bundle(session, DEMO_BUNDLE_DIR, store, BundleRole.LIVE)
            shadow = install_bundle(session, make_bundle(tmp_path, CHALLENGER), store)
            live_version, live_sha, shadow_sha = live.version, live.sha256, shadow.sha256
        assert shadow_sha == bundle_digest(Path(shadow.path)) != live_sha

        _send_as_pacs(node, [*make_case(3).datasets], tmp_path / "case1")
        (first,) = finished_jobs(node, 1, timeout=180)
        assert first.state == "done", first.error
        detail = _detail(node, first.id)
        assert detail.result is not None and detail.result.probability is not None
        assert (detail.result.bundle_version, detail.result.bundle_sha256) == (
            live_version,
            live_sha,
        )
        (answer,) = detail.shadow
        assert (answer.bundle_version, answer.bundle_sha256) == (CHALLENGER, shadow_sha)
        assert answer.outcome == "predicted" and answer.probability is not None
        assert detail.result.detail is not None
        objects = len(detail.result.detail["objects"])
        _delivered(node, pacs, objects)
        # Only the live bundle's objects went out; the shadow's answer made none.
        assert _exported_versions(node, pacs, first.id) == {live_version}
        shadow_dir = node.settings.data_dir / "spool" / "work" / f"job-{first.id}" / "shadow"
        assert not list(shadow_dir.rglob("*.dcm"))

        client = make_client(node)
        shown = client.get(f"/api/v1/jobs/{first.id}").json()
        assert [(s["bundle_version"], s["outcome"]) for s in shown["shadow"]] == [
            (CHALLENGER, "predicted")
        ]
        assert shown["result"]["bundle_sha256"] == live_sha
        _check_dashboard(node, first.id, shadow_sha)

        listed = {b["version"]: b["role"] for b in client.get("/api/v1/bundles").json()}
        assert listed == {live_version: "live", CHALLENGER: "shadow"}
        with node.database.session() as session:
            set_role(session, live.name, BundleRole.LIVE, CHALLENGER)
            assert [b.version for b in shadow_bundles(session)] == [live_version]
        assert client.get("/api/v1/bundle").json()["version"] == CHALLENGER  # the one in use

        _send_as_pacs(node, [*make_case(4).datasets], tmp_path / "case2")
        second = finished_jobs(node, 2, timeout=180)[0]
        assert second.state == "done", second.error
        detail = _detail(node, second.id)
        assert detail.result is not None
        assert (detail.result.bundle_version, detail.result.bundle_sha256) == (
            CHALLENGER,
            shadow_sha,
        )
        assert [(a.bundle_version, a.outcome) for a in detail.shadow] == [
            (live_version, "predicted")
        ]
        assert detail.result.detail is not None
        _delivered(node, pacs, objects + len(detail.result.detail["objects"]))
        assert _exported_versions(node, pacs, second.id) == {CHALLENGER}
    finally:
        pacs.stop()


def test_a_failing_shadow_bundle_leaves_the_live_result_and_the_job_alone(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    store = node.settings.data_dir / "bundles"
    with node.database.session() as session:
        install_bundle(session, make_bundle(tmp_path, "9.9-broken"), store)
        broken = Path(shadow_bundles(session)[0].path)
    (broken / "llnm" / "model.safetensors").write_bytes(b"not the sealed weights")

    _send_as_pacs(node, [*make_case(3).datasets], tmp_path / "case")
    (job,) = finished_jobs(node, 1, timeout=180)
    assert job.state == "done", job.error
    detail = _detail(node, job.id)
    assert detail.result is not None and detail.result.probability is not None
    (answer,) = detail.shadow
    assert answer.outcome == FAILED and answer.error is not None
    assert "BundleError" in answer.error and answer.probability is None
    with node.database.session() as session:
        kinds = [e.kind for e in session.query(Event).filter(Event.job_fk == job.id)]
    assert "shadow.failed" in kinds
