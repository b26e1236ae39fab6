"""Export by STOW-RS (``kind = "dicomweb"``) to a real Orthanc with its DICOMweb plugin.

Orthanc is the Debian package with orthanc-dicomweb, on loopback. What it cannot check
(bearer tokens) or serve (its HTTPS resets every connection in the Debian build) a small
real HTTP(S) proxy in front of it does.
"""

from __future__ import annotations

import http.server
import io
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, wait_for
from orthanc_peer import ORTHANC_BIN, Orthanc, dicomweb_settings, start_orthanc
from pydicom import dcmread
from test_export import event_kinds, exporter, make_done_job, queue, rows, write_result

import dicom_factory
from db.models import utcnow
from db.session import Database
from dicom_node.app.node import Node
from dicom_node.network.exporter import RoundSummary
from dicom_node.settings import DicomWebDestination, ExportSettings

pytestmark = pytest.mark.skipif(not ORTHANC_BIN.exists(), reason="the orthanc package is missing")

USER, PASSWORD, TOKEN = "llnm", "s3cret-pw", "token-for-the-node"


def orthanc_settings(**extra: Any) -> dict[str, Any]:
    return {
        "Name": "llnm-dicomweb-test",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        **dicomweb_settings(),
        **extra,
    }


def settings_for(*destinations: dict[str, Any], **values: Any) -> ExportSettings:
    values = {"initial_backoff_s": 0.05, "max_backoff_s": 1.0, **values}
    tables = [{"kind": "dicomweb", "timeout_s": 10, **d} for d in destinations]
    return ExportSettings.model_validate({"destinations": tables, **values})


def stored_uids(orthanc: Orthanc) -> list[str]:
    """SOP Instance UIDs of every instance Orthanc holds (one entry per stored instance)."""
    instances = orthanc.get("/instances?expand")
    return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with start_orthanc(tmp_path / "orthanc", orthanc_settings()) as running:
        yield running


def big_image(spool: Path, job_id: int) -> tuple[str, str]:
    """An ultrasound image of 1.2 MB: sent in chunks (dicomweb-client's chunk is 1 MB)."""
    ds = dicom_factory.ultrasound(study_uid="1.2.3", rows=1000, columns=1200, seed=3)
    relative = f"work/job-{job_id}/report/heatmap.dcm"
    dicom_factory.write(ds, spool / relative)
    return str(ds.SOPInstanceUID), relative


def test_stow_rs_stores_every_file_in_orthanc(
    database: Database, tmp_path: Path, orthanc: Orthanc
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    objects = [write_result(spool, job_id), big_image(spool, job_id)]
    queue(database, job_id, objects, "viewer")
    settings = settings_for({"name": "viewer", "url": orthanc.dicomweb_url})

    assert exporter(database, spool, settings).run_round() == RoundSummary(sent=2)

    assert stored_uids(orthanc) == sorted(uid for uid, _ in objects)
    assert {(r.state, r.last_status, r.attempts, r.error) for r in rows(database)} == {
        ("sent", 0, 1, None)
    }
    assert "export.sent" in event_kinds(database, job_id)
    [found] = orthanc.post("/tools/lookup", objects[1][0].encode())
    with urllib.request.urlopen(f"{orthanc.base_url}{found['Path']}/file", timeout=10) as answer:
        stored = dcmread(io.BytesIO(answer.read()))
    assert stored.PixelData == dcmread(spool / objects[1][1]).PixelData


def test_node_exports_to_dicomweb_in_the_background(
    node_factory: Callable[..., Node], orthanc: Orthanc
) -> None:
    destination = {"name": "viewer", "kind": "dicomweb", "url": orthanc.dicomweb_url}
    node = node_factory(export={"destinations": [destination], "poll_seconds": 0.05})
    job_id = make_done_job(node.database)
    sop_uid, relative = write_result(node.spool.layout.root, job_id)
    queue(node.database, job_id, [(sop_uid, relative)], "viewer")

    wait_for(lambda: stored_uids(orthanc) == [sop_uid], timeout=15, what="the STOW-RS store")
    wait_for(lambda: rows(node.database)[0].state == "sent", timeout=15, what="the sent mark")


def test_down_then_up_backs_off_and_delivers_once(database: Database, tmp_path: Path) -> None:
    spool, workdir, port = tmp_path / "spool", tmp_path / "orthanc", free_port()
    job_id = make_done_job(database)
    first = [write_result(spool, job_id, "a.dcm"), write_result(spool, job_id, "b.dcm")]
    queue(database, job_id, first, "viewer")
    url = f"http://127.0.0.1:{port}/dicom-web"
    node = exporter(database, spool, settings_for({"name": "viewer", "url": url}))
    t0 = utcnow()
    waits = []
    for round_ in range(3):
        now = t0 + timedelta(seconds=round_)
        assert node.run_round(now) == RoundSummary(retrying=2)
        for row in rows(database):
            assert (row.state, row.attempts, row.last_status) == ("pending", round_ + 1, None)
            assert row.error is not None and "refused" in row.error.lower()
            assert row.error.startswith(f"cannot reach http://127.0.0.1:{port}: ")
            assert row.next_attempt_at is not None
            waits.append((row.next_attempt_at - now).total_seconds())
    assert waits == pytest.approx([0.05, 0.05, 0.1, 0.1, 0.2, 0.2])
    assert node.run_round(t0 + timedelta(seconds=2.1)) == RoundSummary()  # not due yet

    with start_orthanc(workdir, orthanc_settings(), http_port=port) as orthanc:
        assert node.run_round(t0 + timedelta(seconds=3)) == RoundSummary(sent=2)
        assert node.run_round(t0 + timedelta(seconds=4)) == RoundSummary()
        assert queue(database, job_id, first, "viewer") == 0  # already sent: left alone
    # Stopped mid-way: a later result waits, then reaches the same Orthanc started again.
    later = write_result(spool, job_id, "c.dcm")
    queue(database, job_id, [later], "viewer")
    assert node.run_round(t0 + timedelta(seconds=5)) == RoundSummary(retrying=1)
    with start_orthanc(workdir, orthanc_settings(), http_port=port) as orthanc:
        assert node.run_round(t0 + timedelta(seconds=6)) == RoundSummary(sent=1)
        assert stored_uids(orthanc) == sorted(uid for uid, _ in [*first, later])
    assert {r.state for r in rows(database)} == {"sent"}
    assert "export.dead" not in event_kinds(database, job_id)


def test_basic_auth_wrong_password_is_401_right_one_delivers(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    sop_uid, relative = write_result(spool, job_id)
    queue(database, job_id, [(sop_uid, relative)], "wrong", "right")
    monkeypatch.setenv("LLNM_TEST_PACS_PASSWORD", PASSWORD)
    secured = orthanc_settings(AuthenticationEnabled=True, RegisteredUsers={USER: PASSWORD})
    with start_orthanc(tmp_path / "orthanc", secured, credentials=(USER, PASSWORD)) as orthanc:
        basic = {"type": "basic", "username": USER}
        settings = settings_for(
            {"name": "wrong", "url": orthanc.dicomweb_url, "auth": {**basic, "password": "nope"}},
            {
                "name": "right",
                "url": orthanc.dicomweb_url,
                "auth": {**basic, "password": {"env": "LLNM_TEST_PACS_PASSWORD"}},
            },
        )
        assert exporter(database, spool, settings).run_round() == RoundSummary(sent=1, retrying=1)
        assert stored_uids(orthanc) == [sop_uid]
    state = {r.destination: r for r in rows(database)}
    assert (state["right"].state, state["right"].last_status) == ("sent", 0)
    wrong = state["wrong"]
    assert (wrong.state, wrong.last_status) == ("pending", 401)
    assert wrong.error is not None and wrong.error.startswith("HTTP 401 Unauthorized")


class _Proxy(http.server.ThreadingHTTPServer):
    """A real HTTP(S) front of Orthanc's DICOMweb: checks what Orthanc cannot, passes POSTs on.

    With ``token`` it answers 401 to a request without that bearer token; with ``tls``
    (a server context) it speaks HTTPS only, as that context demands.
    """

    def __init__(
        self, upstream: str, *, token: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.upstream = upstream
        self.token = token
        self.authorizations: list[str] = []
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}/dicom-web"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _Proxy

    def do_POST(self) -> None:
        authorization = self.headers.get("Authorization", "")
        self.server.authorizations.append(authorization)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.token is not None and authorization != f"Bearer {self.server.token}":
            self._answer(401, b"", "text/plain")
            return
        upstream = self.server.upstream + self.path.removeprefix("/dicom-web")
        request = urllib.request.Request(upstream, data=body, method="POST")
        request.add_header("Content-Type", self.headers["Content-Type"])
        request.add_header("Accept", "application/dicom+json")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                self._answer(answer.status, answer.read(), "application/dicom+json")
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read(), "application/dicom+json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what it needs from the server."""


@contextmanager
def proxy_in_front(
    orthanc: Orthanc, *, token: str | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[_Proxy]:
    proxy = _Proxy(orthanc.dicomweb_url, token=token, tls=tls)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)


def test_bearer_token_is_sent_from_a_file(
    database: Database, tmp_path: Path, orthanc: Orthanc
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    sop_uid, relative = write_result(spool, job_id)
    queue(database, job_id, [(sop_uid, relative)], "stale", "viewer")
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")  # as secrets are often written: a trailing newline
    with proxy_in_front(orthanc, token=TOKEN) as proxy:
        url = proxy.url
        settings = settings_for(
            {"name": "stale", "url": url, "auth": {"type": "bearer", "token": "old-token"}},
            {
                "name": "viewer",
                "url": url,
                "auth": {"type": "bearer", "token": {"file": token_file}},
            },
        )
        assert exporter(database, spool, settings).run_round() == RoundSummary(sent=1, retrying=1)
        assert sorted(proxy.authorizations) == ["Bearer old-token", f"Bearer {TOKEN}"]
    assert stored_uids(orthanc) == [sop_uid]
    state = {r.destination: r for r in rows(database)}
    assert state["viewer"].state == "sent"
    assert (state["stale"].state, state["stale"].last_status) == ("pending", 401)


@pytest.fixture(scope="module")
def https_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("https-pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        extensions = ["-extfile", "san.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extensions)  # fmt: skip
    (d / "server-bundle.pem").write_text(
        (d / "server.key").read_text() + (d / "server.pem").read_text()
    )
    return {p.name: p for p in d.iterdir()}


def test_https_verifies_the_server_and_presents_the_client_certificate(
    database: Database, tmp_path: Path, https_pki: dict[str, Path], orthanc: Orthanc
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    sop_uid, relative = write_result(spool, job_id)
    queue(database, job_id, [(sop_uid, relative)], "archive", "anonymous", "unknown-ca")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=https_pki["ca.pem"])
    server.load_cert_chain(https_pki["server.pem"], https_pki["server.key"])
    server.verify_mode = ssl.CERT_REQUIRED  # a client certificate signed by the CA
    with proxy_in_front(orthanc, tls=server) as proxy:
        ca = {"ca_file": https_pki["ca.pem"]}
        client_cert = {"cert_file": https_pki["client.pem"], "key_file": https_pki["client.key"]}
        settings = settings_for(
            {"name": "archive", "url": proxy.url, "tls": {**ca, **client_cert}},
            {"name": "anonymous", "url": proxy.url, "tls": ca},
            {"name": "unknown-ca", "url": proxy.url, "tls": client_cert},  # the system CAs
            initial_backoff_s=60,
        )
        assert exporter(database, spool, settings).run_round() == RoundSummary(sent=1, retrying=2)
        origin = proxy.url.removesuffix("/dicom-web")
    assert stored_uids(orthanc) == [sop_uid]
    state = {r.destination: r for r in rows(database)}
    assert state["archive"].state == "sent"
    for name in ("anonymous", "unknown-ca"):
        error = state[name].error
        assert (state[name].state, state[name].last_status) == ("pending", None)
        assert error is not None and error.startswith(f"TLS with {origin} failed"), error
    assert "CERTIFICATE_VERIFY_FAILED" in (state["unknown-ca"].error or "")


def test_a_refused_file_fails_alone(database: Database, tmp_path: Path, orthanc: Orthanc) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    good = write_result(spool, job_id, "good.dcm")
    no_uid = dicom_factory.text_report(study_uid="1.2.3", text="no SOP Instance UID")
    del no_uid.SOPInstanceUID  # Orthanc refuses to store it
    refused = ("1.2.826.0.1.99.404", f"work/job-{job_id}/report/refused.dcm")
    dicom_factory.write(no_uid, spool / refused[1])
    garbage = ("1.2.826.0.1.99.405", f"work/job-{job_id}/report/garbage.dcm")
    (spool / garbage[1]).write_bytes(b"not a DICOM file at all")
    queue(database, job_id, [refused, good, garbage], "viewer")
    settings = settings_for({"name": "viewer", "url": orthanc.dicomweb_url})

    assert exporter(database, spool, settings).run_round() == RoundSummary(sent=1, retrying=2)

    assert stored_uids(orthanc) == [good[0]]
    state = {r.sop_instance_uid: r for r in rows(database)}
    assert state[good[0]].state == "sent"
    assert (state[refused[0]].state, state[refused[0]].last_status) == ("pending", 400)
    assert state[refused[0]].error == "HTTP 400 Bad Request"
    assert state[garbage[0]].last_status is None
    assert (state[garbage[0]].error or "").startswith("result file cannot be read")


def test_destination_settings_reach_the_sender(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\r\n")
    destination = DicomWebDestination.model_validate(
        {
            "name": "pacs",
            "kind": "dicomweb",
            "url": "https://pacs.example.org/dicom-web/",
            "ae_title": "PACS",
            "auth": {"type": "basic", "username": "u", "password": {"file": secret}},
        }
    )
    assert destination.url == "https://pacs.example.org/dicom-web"
    assert destination.auth.type == "basic"
    assert destination.auth.password.reveal() == "from-a-file"
    assert "from-a-file" not in repr(destination)
    assert destination.returns_to("PACS ") and not destination.returns_to("OTHER")
