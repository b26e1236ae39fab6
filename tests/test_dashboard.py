"""The web dashboard in a running node: plain HTTP checks and headless Chromium with Selenium.

One node serves every test: a predicted phantom, a corrupt study that fails, and
exports to a destination that is down, so they go dead. Screenshots of the pages
are kept under the test's folder and copied to /tmp/llnm-dashboard-screenshots.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import pytest
from browser import headless_chromium
from harness import free_port, wait_for
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless
from pynetdicom import AE, StoragePresentationContexts, evt
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from db import exports, listings
from dicom_node.api.auth import COOKIE, Caller, Sessions, token_digest
from dicom_node.app.node import Node
from dicom_node.app.site_validation import ValidationCase, validate
from dicom_node.network import scu
from dicom_node.settings import Settings
from models.demo import DEMO_BUNDLE_DIR
from phantoms import make_case
from phantoms.case import PhantomCase

TOKEN = "dashboard-test-token"
_ADMIN = {"name": "test-admin", "sha256": token_digest(TOKEN)}
_BEARER = {"Authorization": f"Bearer {TOKEN}"}
PACS_AE = "TEST_PACS"
SCREENSHOTS = Path("/tmp/llnm-dashboard-screenshots")
FINISHED = {"done", "failed", "dead", "cancelled"}


@dataclass
class Site:
    """The node under test and what was sent to it."""

    node: Node
    url: str
    folder: Path
    destination_port: int
    case: PhantomCase
    jobs: dict[str, int]  # "predicted", "failed" -> job id


def _send(node: Node, datasets: Sequence[Dataset], folder: Path) -> int:
    """Send ``datasets`` as the PACS; returns the id of their job."""
    folder.mkdir(parents=True)
    paths = []
    for n, dataset in enumerate(datasets):
        paths.append(folder / f"{n}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    peer = scu.Peer(
        host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title, calling_ae=PACS_AE
    )
    assert all(o.ok for o in scu.send_files(peer, paths))
    with node.database.session() as session:
        return listings.list_jobs(session, limit=1)[0].id


def _corrupt_dataset() -> Dataset:
    broken = make_case(11).datasets[0]
    broken.compress(RLELossless)
    stream = bytearray(broken.PixelData)
    stream[200:-200] = bytes(len(stream) - 400)  # segments no longer decode
    broken.PixelData = bytes(stream)
    return broken


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A node whose only destination is down (one attempt per export), with two jobs sent."""
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    node = Node(
        Settings(
            data_dir=folder / "node",
            dicom={"host": "127.0.0.1", "port": 0},
            completion={"quiet_seconds": 15, "poll_seconds": 0.2},
            min_free_disk_mb=5,
            api={"port": 0, "tokens": [_ADMIN]},
            export={
                "destinations": [
                    {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": port}
                ],
                "max_attempts": 1,
                "poll_seconds": 0.2,
            },
        )
    )
    node.start()
    try:
        case = make_case(1)
        assert case.report_dataset is not None
        jobs = {
            "predicted": _send(node, [*case.datasets, case.report_dataset], folder / "case"),
            "failed": _send(node, [_corrupt_dataset()], folder / "broken"),
        }
        yield Site(node, f"http://127.0.0.1:{node.api_port}", folder, port, case, jobs)
    finally:
        node.stop()


def _job_state(site: Site, job_id: int) -> str:
    with site.node.database.session() as session:
        return listings.job_detail(session, job_id=job_id).job.state


def _export_states(site: Site, job_id: int) -> set[str]:
    with site.node.database.session() as session:
        return {row.state for row in exports.list_exports(session, job_id=job_id)}


def _settled(site: Site) -> None:
    """Wait until the site's two jobs finished and their exports gave up."""
    jobs = site.jobs.values()
    wait_for(
        lambda: all(_job_state(site, j) in FINISHED for j in jobs),
        timeout=300,
        what="the jobs",
        interval=0.2,
    )
    wait_for(
        lambda: all(_export_states(site, j) == {"dead"} for j in jobs),
        timeout=60,
        what="dead exports",
        interval=0.2,
    )


@pytest.fixture
def client(site: Site) -> Iterator[httpx.Client]:
    """An HTTP client logged in through the login form (a session cookie), from our own pages."""
    with httpx.Client(base_url=site.url, headers={"Origin": site.url}) as logged_in:
        response = logged_in.post("/ui/login", data={"token": TOKEN})
        assert response.status_code == 303 and COOKIE in logged_in.cookies
        yield logged_in


# --- plain HTTP -----------------------------------------------------------------------


def test_pages_without_the_cookie_redirect_to_the_login_page(site: Site) -> None:
    for path in (
        "/ui/",
        "/ui/exports",
        "/ui/outcomes",
        "/ui/risk-map",
        f"/ui/jobs/{site.jobs['predicted']}",
    ):
        response = httpx.get(site.url + path)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert httpx.get(site.url + "/ui/jobs.json?ids=1").status_code == 401
    login = httpx.get(site.url + "/ui/login")
    assert login.status_code == 200 and 'type="password"' in login.text


def test_a_wrong_token_gets_the_form_again_with_401(site: Site) -> None:
    ours = {"Origin": site.url}
    response = httpx.post(site.url + "/ui/login", data={"token": "wrong"}, headers=ours)
    assert response.status_code == 401
    assert "not valid" in response.text and COOKIE not in response.headers.get("set-cookie", "")
    good = httpx.post(site.url + "/ui/login", data={"token": TOKEN}, headers=ours)
    assert good.status_code == 303
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=28800" in cookie and TOKEN not in cookie  # a session id, 8 hours


def test_sessions_end_at_logout_and_when_they_expire(site: Site) -> None:
    with httpx.Client(base_url=site.url, headers={"Origin": site.url}) as browser:
        browser.post("/ui/login", data={"token": TOKEN})
        session = browser.cookies[COOKIE]
        assert browser.get("/ui/").status_code == 200
        browser.get("/ui/logout")
    replayed = httpx.get(site.url + "/ui/", cookies={COOKIE: session})
    assert replayed.status_code == 303  # revoked on the server, not just forgotten
    assert httpx.get(site.url + "/ui/", cookies={COOKIE: TOKEN}).status_code == 303
    sessions = Sessions(minutes=0.001)  # 60 ms
    opened = sessions.open(Caller("ops"))
    assert sessions.caller(opened) == Caller("ops")
    time.sleep(0.1)
    assert sessions.caller(opened) is None and sessions.caller(None) is None


def test_cross_site_posts_are_refused_and_pages_carry_security_headers(
    site: Site, client: httpx.Client
) -> None:
    _settled(site)
    job_id = site.jobs["failed"]
    logged_in = {COOKIE: client.cookies[COOKIE]}
    for foreign in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}, {}):
        retry = httpx.post(f"{site.url}/ui/jobs/{job_id}/retry", cookies=logged_in, headers=foreign)
        assert retry.status_code == 403, foreign
        login = httpx.post(site.url + "/ui/login", data={"token": TOKEN}, headers=foreign)
        assert login.status_code == 403 and "set-cookie" not in login.headers
    with site.node.database.session() as session:
        kinds = [e.kind for e in listings.job_detail(session, job_id=job_id).events]
    assert "job.retry_requested" not in kinds
    page = client.get("/ui/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/docs", "/redoc", "/openapi.json"):  # off unless api.openapi
        assert httpx.get(site.url + path, headers=bearer).status_code == 404


def test_a_remote_api_needs_tls_and_serves_https(
    tmp_path: Path, certificates: dict[str, Path]
) -> None:
    with pytest.raises(ValidationError, match="clear text"):
        Settings(api={"host": "0.0.0.0"})
    assert Settings(api={"host": "0.0.0.0", "behind_tls_proxy": True}).api.behind_tls_proxy
    tls = {"cert_file": certificates["server.pem"], "key_file": certificates["server.key"]}
    settings = Settings(
        data_dir=tmp_path / "node",
        dicom={"host": "127.0.0.1", "port": 0},
        api={"host": "127.0.0.1", "port": 0, "tls": tls, "tokens": [_ADMIN]},
    )
    node = Node(settings)
    node.start()
    try:
        url = f"https://127.0.0.1:{node.api_port}"
        trusted = ssl.create_default_context(cafile=str(certificates["ca.pem"]))
        trusted.check_hostname = False  # the test certificate names "server", not 127.0.0.1
        with httpx.Client(base_url=url, verify=trusted) as https:
            assert https.get("/health").json() == {"status": "ok"}
            login = https.post("/ui/login", data={"token": TOKEN}, headers={"Origin": url})
            assert "Secure" in login.headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{node.api_port}/health", timeout=5)
    finally:
        node.stop()


def test_no_page_shows_the_patient_name_or_id(site: Site, client: httpx.Client) -> None:
    _settled(site)
    ids = ",".join(str(j) for j in site.jobs.values())
    paths = ["/ui/", "/ui/exports", "/ui/outcomes", "/ui/risk-map", "/ui/bundle", "/ui/validation"]
    paths.append(f"/ui/jobs.json?ids={ids}")
    paths += [f"/ui/jobs/{job_id}" for job_id in site.jobs.values()]
    phi = [s for s in site.case.phi if len(s) >= 4]
    assert phi
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, path
        text = page.text.lower()
        leaked = [s for s in phi if s.lower() in text]
        assert not leaked, f"{path} shows {leaked}"


def test_the_job_list_filters_by_state_and_calling_ae_and_pages(
    site: Site, client: httpx.Client
) -> None:
    _settled(site)

    def listed(query: str) -> list[str]:
        return re.findall(r'<tr data-job="(\d+)"', client.get("/ui/?" + query).text)

    assert listed("state=failed") == [str(site.jobs["failed"])]
    assert str(site.jobs["predicted"]) in listed(f"state=done&ae={PACS_AE}")
    assert listed("ae=NOBODY") == [] and listed("page=2") == []
    assert listed("state=no-such-state") == listed("")  # an unknown state filters nothing


def test_the_heatmap_route_serves_only_the_overlays_of_the_result(
    site: Site, client: httpx.Client
) -> None:
    _settled(site)
    job_id = site.jobs["predicted"]
    page = client.get(f"/ui/jobs/{job_id}").text
    names = re.findall(rf'src="/ui/jobs/{job_id}/heatmaps/([^"]+)"', page)
    assert len(names) == 2
    image = client.get(f"/ui/jobs/{job_id}/heatmaps/{names[0]}")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    report = f"/ui/jobs/{job_id}/heatmaps/"
    for attempt in (
        report + "sc_1.dcm",  # in the folder, but not an overlay of the result
        report + "..%2F..%2F..%2Fjobs.db",
        report + "%2E%2E%2Fdeid",
        report + "..%5C..%5Cjobs.db",
        f"/ui/jobs/{site.jobs['failed']}/heatmaps/{names[0]}",  # another job's overlay
    ):
        assert client.get(attempt).status_code == 404, attempt


def test_the_risk_map_page_shows_the_bundle_maps_and_counts(
    site: Site, client: httpx.Client
) -> None:
    page = client.get("/ui/risk-map")
    assert page.status_code == 200
    summary = json.loads((DEMO_BUNDLE_DIR / "risk_map" / "risk_map.json").read_text())
    assert f"Built from {summary['cases']} cases" in page.text
    assert 'data-map="longitudinal.right"' in page.text
    names = re.findall(r'src="/ui/risk-map/([^"]+)"', page.text)
    assert "longitudinal_right.png" in names and "lobe_left_3d.png" in names
    picture = client.get(f"/ui/risk-map/{names[0]}")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    for attempt in ("risk_map.json", "..%2Fmanifest.json", "..%2F..%2Fdemo_bundle%2Fmanifest.json"):
        assert client.get(f"/ui/risk-map/{attempt}").status_code == 404, attempt
    assert httpx.get(site.url + "/ui/risk-map").status_code == 303  # no cookie: log in first


def test_the_model_page_shows_the_bundles_card(client: httpx.Client) -> None:
    page = client.get("/ui/bundle")
    assert page.status_code == 200
    assert 'id="clinical-use">NOT FOR CLINICAL USE' in page.text
    assert 'data-section="Known limitations"' in page.text and "95 % CI" in page.text


def test_the_validation_page_lists_the_reports_validate_wrote(
    site: Site, client: httpx.Client
) -> None:
    cases = [
        ValidationCase(i, i % 2 == 0, "predicted", None, 0.9 if i % 3 else 0.2, 0.5,
                       {"device": "GE", "sex": "F", "age": "45-59", "calibrated": "yes"})
        for i in range(24)
    ]  # fmt: skip
    validate(cases, "site-bundle", site.node.settings.data_dir / "validation" / "site-bundle")
    page = client.get("/ui/validation")
    assert page.status_code == 200 and 'data-bundle="site-bundle"' in page.text
    report = client.get("/ui/validation/site-bundle/report")
    assert report.status_code == 200 and "Site validation of site-bundle" in report.text
    assert "data:image/png;base64," in report.text  # 24 predicted cases: numbers and plots
    for name in ("other", "..%2F..%2Fspool", "site-bundle%2F..%2F.."):
        assert client.get(f"/ui/validation/{name}/report").status_code == 404, name


def test_outcomes_are_uploaded_from_the_dashboard_and_the_api(
    site: Site, client: httpx.Client
) -> None:
    _settled(site)  # de-identification has stored the accession number's pseudonym
    original = site.case.datasets[0]
    accession, uid = str(original.AccessionNumber), str(original.StudyInstanceUID)
    upload = f"accession_number,llnm,nodal_stage\n{accession},yes,2\nNO-SUCH-1,no,\n"
    page = client.post("/ui/outcomes", files={"file": ("o.csv", upload, "text/csv")})
    assert page.status_code == 200
    assert "2 rows: 1 new, 0 updated, 0 unchanged" in " ".join(page.text.split())
    assert 'data-problem="unmatched"' in page.text and "NO-SUCH-1" not in page.text
    by_uid = {"file": ("o.csv", f"study_instance_uid,llnm,nodal_stage\n{uid},yes,2\n", "text/csv")}
    api = httpx.post(f"{site.url}/api/v1/outcomes", headers=_BEARER, files=by_uid)
    assert api.status_code == 200, api.text
    assert api.json()["unchanged"] == 1 and api.json()["studies_with_outcome"] == 1
    bad = client.post("/ui/outcomes", files={"file": ("x.csv", "a,b\n1,2\n", "text/csv")})
    assert bad.status_code == 400 and "study_instance_uid" in bad.text
    assert httpx.post(f"{site.url}/api/v1/outcomes", files=by_uid).status_code == 401
    assert "1 studies have an outcome" in client.get("/ui/outcomes").text


def test_links_out_of_the_job_and_ids_beyond_the_database_are_refused(
    site: Site, client: httpx.Client, tmp_path: Path
) -> None:
    _settled(site)
    job_id = site.jobs["predicted"]
    page = client.get(f"/ui/jobs/{job_id}").text
    name = re.findall(rf'src="/ui/jobs/{job_id}/heatmaps/([^"]+)"', page)[0]
    overlay = site.node.spool.layout.work_dir(job_id) / "report" / name
    kept = tmp_path / "kept.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG outside the spool")
    shutil.move(overlay, kept)
    try:
        overlay.symlink_to(outside)
        assert client.get(f"/ui/jobs/{job_id}/heatmaps/{name}").status_code == 404
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        api = [
            httpx.get(f"{site.url}/api/v1/jobs/{job_id}/heatmaps/{n}", headers=bearer)
            for n in (1, 2)
        ]
        assert [r.status_code for r in api] == [200, 404]  # one view left, and only its own
        assert b"outside" not in api[0].content
    finally:
        overlay.unlink()
        shutil.move(kept, overlay)
    assert client.get(f"/ui/jobs/{job_id}/heatmaps/{name}").status_code == 200
    for huge in (2**63, 2**64, 10**30):
        assert client.get(f"/ui/jobs/{huge}").status_code == 422
        assert client.get(f"/ui/jobs/{huge}/heatmaps/{name}").status_code == 422
        assert client.post(f"/ui/jobs/{huge}/cancel").status_code in (403, 422)


# --- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium, 1280 x 1000."""
    with headless_chromium(1280, 1000) as driver:
        yield driver


def _row(browser: WebDriver, job_id: int) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')


def _badge(browser: WebDriver, job_id: int) -> WebElement:
    return _row(browser, job_id).find_element(By.CSS_SELECTOR, '[data-role="state"]')


def _screenshot(browser: WebDriver, folder: Path, name: str) -> Path:
    """Save a whole-page screenshot under ``folder`` and in SCREENSHOTS; check it is not blank."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(1000, int(height) + 100))
    try:
        assert browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(1280, 1000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] >= 600 and image.shape[1] >= 1000
    assert float(image.std()) > 20, f"{path} looks blank"
    return path


def _log_in(browser: WebDriver, site: Site) -> None:
    browser.get(site.url + "/ui/")
    assert browser.current_url.endswith("/ui/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith("/ui/"))


def _watch_live(browser: WebDriver, site: Site, shots: Path) -> None:
    """The list page updates a job's badge to done without being reloaded."""
    job_id = _send(site.node, make_case(3).datasets, site.folder / "live")
    browser.get(site.url + "/ui/")
    assert _badge(browser, job_id).text in {"received", "queued", "running"}
    browser.execute_script("window.notReloaded = true")
    WebDriverWait(browser, 300, poll_frequency=0.5).until(
        lambda b: _badge(b, job_id).text in FINISHED
    )
    assert _badge(browser, job_id).text == "done"
    assert browser.execute_script("return window.notReloaded") is True
    _settled(site)
    browser.refresh()
    assert _badge(browser, site.jobs["failed"]).text == "failed"
    for done in (job_id, site.jobs["predicted"]):
        assert "NOT FOR CLINICAL USE" in _row(browser, done).text
    assert "NOT FOR CLINICAL USE" not in _row(browser, site.jobs["failed"]).text
    _screenshot(browser, shots, "jobs")


def _check_job_page(browser: WebDriver, site: Site, shots: Path) -> None:
    browser.get(f"{site.url}/ui/jobs/{site.jobs['predicted']}")
    probability = float(browser.find_element(By.ID, "probability").text)
    assert 0.0 <= probability <= 1.0
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart .bar rect")) == 8
    labels = browser.find_elements(By.CSS_SELECTOR, "svg.chart .bar text")
    assert all(label.text for label in labels) and any("%" in label.text for label in labels)
    images = browser.find_elements(By.CSS_SELECTOR, ".heatmaps img")
    assert images and all(image.get_attribute("alt") for image in images)
    WebDriverWait(browser, 10).until(
        lambda b: all(b.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    )
    assert browser.find_element(By.CSS_SELECTOR, ".banner.not-clinical").is_displayed()
    _screenshot(browser, shots, "job")


def _retry_dead_export(browser: WebDriver, site: Site, shots: Path) -> None:
    """Retry on the exports page resends the dead exports once the destination is up."""
    job_id = site.jobs["predicted"]
    browser.get(site.url + "/ui/exports")
    assert "dead" in browser.find_element(By.TAG_NAME, "tbody").text
    _screenshot(browser, shots, "exports")
    pacs = AE(ae_title=PACS_AE)
    pacs.supported_contexts = StoragePresentationContexts
    server = pacs.start_server(
        ("127.0.0.1", site.destination_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda _event: 0x0000)],
    )
    assert server is not None  # block=False returns the running server
    try:
        button = f'form[action="/ui/jobs/{job_id}/retry"] button'
        browser.find_element(By.CSS_SELECTOR, button).click()
        flash = WebDriverWait(browser, 15).until(
            lambda b: b.find_element(By.CSS_SELECTOR, ".flash")
        )
        assert f"export(s) of job {job_id} queued again" in flash.text
        assert browser.current_url.endswith("/ui/exports")
        wait_for(
            lambda: _export_states(site, job_id) == {"sent"},
            timeout=60,
            what="the resend",
            interval=0.2,
        )
    finally:
        server.shutdown()
    browser.get(f"{site.url}/ui/jobs/{job_id}")
    badges = browser.find_elements(By.CSS_SELECTOR, ".export .badge")
    assert badges and {badge.text for badge in badges} == {"sent"}
    assert "export.retry" in browser.find_element(By.CLASS_NAME, "timeline").text


def _cancel(browser: WebDriver, site: Site) -> None:
    """A job still waiting for its study to settle is cancelled from its page."""
    job_id = _send(site.node, make_case(2).datasets, site.folder / "cancel")
    browser.get(f"{site.url}/ui/jobs/{job_id}")
    browser.find_element(By.CSS_SELECTOR, f'form[action="/ui/jobs/{job_id}/cancel"] button').click()
    flash = WebDriverWait(browser, 15).until(lambda b: b.find_element(By.CSS_SELECTOR, ".flash"))
    assert f"Job {job_id} cancelled." in flash.text
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "cancelled"
    assert "cancelled by test-admin" in browser.find_element(By.CLASS_NAME, "timeline").text
    assert not browser.find_elements(By.CSS_SELECTOR, f'form[action$="/{job_id}/cancel"]')
    assert _job_state(site, job_id) == "cancelled"


def test_the_dashboard_in_headless_chromium(site: Site, browser: WebDriver, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    print(f"screenshots: {shots} and {SCREENSHOTS}")
    _log_in(browser, site)
    _watch_live(browser, site, shots)
    _check_job_page(browser, site, shots)
    _cancel(browser, site)
    _retry_dead_export(browser, site, shots)
    assert sorted(p.name for p in shots.iterdir()) == ["exports.png", "job.png", "jobs.png"]
