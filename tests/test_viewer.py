"""The node's results in OHIF: Orthanc with DICOMweb, OHIF on the same origin, headless Chromium.

One viewer (``dicom_node.app.viewer``, as ``llnm-node demo --viewer`` runs it) and one
node serve both cases: a phantom calibrated by its Sequence of Ultrasound Regions
(measurements in mm) and one without (in pixels). Orthanc gets each study's images
from the "PACS" and the node's SR and heatmaps by C-STORE. Each study is opened in
OHIF, then its SR (the nodule outline and labels must be drawn on the referenced
image) and its heatmaps. Screenshots are kept under the test's folder and copied to
/tmp/llnm-viewer-screenshots.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import pytest
from browser import headless_chromium
from harness import log_tail, wait_for
from pydicom import dcmread
from report_cases import write_case
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from dicom_node.app.node import Node
from dicom_node.app.viewer import VIEWER_AE, Viewer
from dicom_node.network import scu
from dicom_node.settings import Settings
from phantoms import PhantomOptions, make_case
from pipeline.report import codes

pytestmark = pytest.mark.viewer

SCREENSHOTS = Path("/tmp/llnm-viewer-screenshots")
# seed and options: the first two demo phantoms' encodings, calibrated and not
CASES = {
    "calibrated": (1, PhantomOptions()),
    "uncalibrated": (3, PhantomOptions(with_regions=False)),
}
SR_SERIES, HEATMAP_SERIES = "9901", "9902"
RESULTS_TIMEOUT_S = 240.0
OHIF_TIMEOUT_S = 90.0
DEMO_TIMEOUT_S = 300.0
LLNM_NODE_EXE = Path(sys.executable).with_name("llnm-node")
STUDY_URL = r"(http://127\.0\.0\.1:\d+)/viewer\?StudyInstanceUIDs=([\d.]+)"
PROMPTS = ("Skip all", "Confirm and hide")  # OHIF's tour and its investigational-use notice
ERROR_TEXTS = ("Something went wrong", "Error loading", "could not be loaded")
# The shares of the viewport's pixels that are lit and that are clearly coloured.
CANVAS_SHARES_JS = """
const canvas = document.querySelector('canvas.cornerstone-canvas');
if (!canvas || !canvas.width) return [0, 0];
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let lit = 0, coloured = 0;
for (let i = 0; i < data.length; i += 4) {
  const high = Math.max(data[i], data[i + 1], data[i + 2]);
  const low = Math.min(data[i], data[i + 1], data[i + 2]);
  if (high > 30) lit++;
  if (high - low > 80) coloured++;
}
return [lit / (data.length / 4), coloured / (data.length / 4)];
"""


@dataclass(frozen=True)
class Outline:
    """One nodule outline of the SR: its labels as OHIF should write them."""

    tracking_uid: str
    labels: dict[str, str]  # concept -> "Meaning: value unit"


@dataclass
class Site:
    """The viewer, the node, and per case the study and the outlines of its SR."""

    viewer: Viewer
    node: Node
    studies: dict[str, str]  # case -> Study Instance UID
    outlines: dict[str, list[Outline]]


def _label(measurement: Any) -> str:
    """A measurement as OHIF labels it: "<meaning>: <value, 2 decimals> <UCUM unit>".

    OHIF 3.13.2 writes no number for a value of 0 (a nodule touching the capsule).
    """
    value = float(measurement.value)
    return f"{measurement.name.meaning}: {f'{value:.2f}' if value else ''} {measurement.unit.value}"


def _outlines(sr_bytes: bytes) -> list[Outline]:
    """The SR's TID 1410 groups, each with its long and short axis and capsule distance."""
    report = hd.sr.MeasurementReport.from_sequence([dcmread(io.BytesIO(sr_bytes))])
    outlines = []
    for group in report.get_planar_roi_measurement_groups():
        found = {
            name: group.get_measurements(name=code)
            for name, code in (
                ("long axis", codes.LONG_AXIS),
                ("short axis", codes.SHORT_AXIS),
                ("capsule distance", codes.CAPSULE_DISTANCE),
            )
        }
        assert all(len(m) == 1 for m in found.values()), found
        labels = {name: _label(m[0]) for name, m in found.items()}
        outlines.append(Outline(str(group.tracking_uid), labels))
    return outlines


def _results(viewer: Viewer, study_uid: str) -> bytes | None:
    """The study's SR from Orthanc once the SR and both heatmaps are there, else None."""
    query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
    series = viewer.rest("POST", "/tools/find", json.dumps(query).encode())
    by_number = {s["MainDicomTags"].get("SeriesNumber"): s for s in series}
    sr, heatmaps = by_number.get(SR_SERIES), by_number.get(HEATMAP_SERIES)
    if sr is None or heatmaps is None or len(heatmaps["Instances"]) < 2:
        return None
    url = f"http://127.0.0.1:{viewer.http_port}/instances/{sr['Instances'][0]}/file"
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def _send_to_node(node: Node, paths: list[Path]) -> None:
    peer = scu.Peer(host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title)
    assert all(o.ok for o in scu.send_files(peer, paths))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The viewer and a node that sends every result there, with both cases' results in."""
    folder = tmp_path_factory.mktemp("viewer")
    with Viewer(folder / "viewer") as viewer:
        node = Node(
            Settings(
                data_dir=folder / "node",
                dicom={"host": "127.0.0.1", "port": 0},
                completion={"quiet_seconds": 0.5, "poll_seconds": 0.1},
                min_free_disk_mb=5,
                api={"port": 0},
                export={
                    "destinations": [
                        {
                            "name": "viewer",
                            "ae_title": VIEWER_AE,
                            "host": "127.0.0.1",
                            "port": viewer.dicom_port,
                            "always": True,
                        }
                    ],
                    "initial_backoff_s": 0.2,
                    "poll_seconds": 0.2,
                },
            )
        )
        node.start()
        try:
            viewer.admit("llnm-node", node.settings.dicom.ae_title, node.port)
            studies = {}
            for name, (seed, options) in CASES.items():
                case = make_case(seed, options)
                paths = write_case(case, folder / name)
                for path in paths:
                    viewer.upload(path)
                _send_to_node(node, paths)
                studies[name] = str(case.datasets[0].StudyInstanceUID)
            outlines = {}
            for name, uid in studies.items():
                sr = wait_for(
                    partial(_results, viewer, uid),
                    timeout=RESULTS_TIMEOUT_S,
                    what=f"the {name} study's SR and heatmaps in Orthanc",
                    interval=0.5,
                    describe=lambda: log_tail(viewer.log_path),
                )
                assert sr is not None  # wait_for returns a true value
                outlines[name] = _outlines(sr)
            yield Site(viewer, node, studies, outlines)
        finally:
            node.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium, 1600 x 1000."""
    with headless_chromium(1600, 1000) as driver:
        yield driver


def _dismiss_prompts(browser: WebDriver) -> None:
    """Close OHIF's first-visit tour and its investigational-use notice where shown."""
    for text in PROMPTS:
        for button in browser.find_elements(By.XPATH, f"//button[normalize-space()='{text}']"):
            if button.is_displayed():
                button.click()


def _assert_no_error(browser: WebDriver) -> None:
    body = browser.find_element(By.TAG_NAME, "body").text
    assert not [t for t in ERROR_TEXTS if t.lower() in body.lower()], body[:2000]
    toasts = browser.find_elements(By.CSS_SELECTOR, '[data-sonner-toast][data-type="error"]')
    assert not toasts, [t.text for t in toasts]


def _thumbnail(browser: WebDriver, series_number: str) -> WebElement | None:
    """The study browser's entry of the series numbered ``series_number``, once shown."""
    _dismiss_prompts(browser)
    found = browser.find_elements(By.CSS_SELECTOR, f'[data-series="{series_number}"]')
    return found[0] if found and found[0].is_displayed() else None


def _canvas_shares(browser: WebDriver) -> tuple[float, float]:
    """The shares of the viewport's pixels that are lit and that are clearly coloured."""
    lit, coloured = browser.execute_script(CANVAS_SHARES_JS)
    return float(lit), float(coloured)


def _open_series(browser: WebDriver, series_number: str) -> None:
    """Double-click the series' entry in the study browser (OHIF loads it in the viewport).

    First the viewport must show an image: OHIF's hanging protocol fills it once
    the study is loaded, which would replace a series opened before.
    """
    entry = wait_for(
        lambda: _thumbnail(browser, series_number),
        timeout=OHIF_TIMEOUT_S,
        what=f"series {series_number} in OHIF's study browser",
        interval=0.5,
    )
    wait_for(
        lambda: _canvas_shares(browser)[0] > 0.2,
        timeout=OHIF_TIMEOUT_S,
        what="an image in OHIF's viewport",
        interval=0.5,
    )
    assert entry is not None  # wait_for returns a true value
    _dismiss_prompts(browser)
    label = entry.find_element(By.CSS_SELECTOR, '[data-cy="series-description-label"]')
    ActionChains(browser).double_click(label).perform()


def _drawn_labels(browser: WebDriver) -> dict[str, str]:
    """Annotation UID -> label text of what cornerstone drew in the viewport's SVG layer."""
    labels = {}
    for group in browser.find_elements(By.CSS_SELECTOR, "svg.svg-layer g[data-annotation-uid]"):
        text = " | ".join(
            span.get_attribute("textContent") or ""
            for span in group.find_elements(By.TAG_NAME, "tspan")
        )
        labels[group.get_attribute("data-annotation-uid") or ""] = text
    return labels


def _outline_points(browser: WebDriver) -> list[int]:
    """The point count of each polyline (or path) drawn in the viewport's SVG layer."""
    counts = [
        len((line.get_attribute("points") or "").split())
        for line in browser.find_elements(By.CSS_SELECTOR, "svg.svg-layer polyline")
    ]
    return counts + [1 for _ in browser.find_elements(By.CSS_SELECTOR, "svg.svg-layer path")]


def _what_shows(browser: WebDriver, folder: Path, name: str) -> str:
    """For a failure message: a screenshot (and the page) saved, and the page's text."""
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))
    (folder / f"{name}.html").write_text(browser.page_source)
    return f"screenshot and page in {folder}\n" + browser.find_element(By.TAG_NAME, "body").text


def _screenshot(browser: WebDriver, folder: Path, name: str) -> Path:
    """Save a screenshot under ``folder`` and in SCREENSHOTS; check it is not blank."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] >= 1500
    assert float(image.std()) > 20, f"{path} looks blank"
    return path


def _next_outline(
    browser: WebDriver, expected: set[str], seen: dict[str, str], folder: Path, case: str
) -> bool:
    """Collect the outlines drawn now (a screenshot of each new one); True once all were.

    Otherwise step to the SR's next measurement with the viewport's arrow: OHIF
    3.13.2 at times opens an SR on an image other than its first measurement's, and
    then draws nothing until one steps through the measurements.
    """
    drawn = {uid: text for uid, text in _drawn_labels(browser).items() if uid in expected}
    if set(drawn) - set(seen):
        _dismiss_prompts(browser)
        _screenshot(browser, folder, f"{case}-sr-{len(seen) + 1}")
    seen.update(drawn)
    if set(seen) == expected:
        return True
    arrows = browser.find_elements(By.CSS_SELECTOR, '[data-cy="viewport-action-arrows-right"]')
    if arrows and arrows[0].is_displayed():
        arrows[0].click()
    return False


@pytest.mark.parametrize("case", list(CASES))
def test_ohif_draws_the_sr_outline_with_its_labels_and_opens_the_heatmaps(
    site: Site, browser: WebDriver, case: str, tmp_path: Path
) -> None:
    browser.get(site.viewer.study_url(site.studies[case]))
    _open_series(browser, SR_SERIES)
    expected = {o.tracking_uid: o for o in site.outlines[case]}
    drawn: dict[str, str] = {}
    wait_for(
        partial(_next_outline, browser, set(expected), drawn, tmp_path, case),
        timeout=OHIF_TIMEOUT_S,
        what="every nodule outline of the SR drawn in OHIF's viewport",
        interval=2.0,
        describe=partial(_what_shows, browser, tmp_path, f"{case}-sr-missing"),
    )
    _assert_no_error(browser)
    assert any(points >= 3 for points in _outline_points(browser))
    for uid, text in drawn.items():
        for label in expected[uid].labels.values():
            assert label in text, (label, text)
    unit = "mm" if case == "calibrated" else "{pixels}"
    assert all(unit in label for o in expected.values() for label in o.labels.values())

    assert _canvas_shares(browser)[1] < 0.01  # the grey ultrasound image
    _open_series(browser, HEATMAP_SERIES)
    wait_for(
        lambda: _canvas_shares(browser)[1] > 0.02,
        timeout=OHIF_TIMEOUT_S,
        what="the heatmap (coloured) in OHIF's viewport",
        interval=0.5,
    )
    _screenshot(browser, tmp_path, f"{case}-heatmap")
    _assert_no_error(browser)


def test_demo_viewer_prints_a_working_url_per_study_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """``llnm-node demo --viewer`` as a person runs it: URLs that open, results behind them."""
    data = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if not k.startswith("LLNM_")}
    demo = subprocess.Popen(
        [str(LLNM_NODE_EXE), "demo", "--viewer", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        while not lines or "Press Ctrl-C" not in lines[-1]:
            line = demo.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        urls = re.findall(
            r"(http://127\.0\.0\.1:\d+)/viewer\?StudyInstanceUIDs=([\d.]+)", "".join(lines)
        )
        assert len(urls) >= 3, "".join(lines)  # the three phantom studies at least
        origin, first = urls[0]
        with urllib.request.urlopen(
            f"{origin}/viewer?StudyInstanceUIDs={first}", timeout=10
        ) as page:
            assert page.status == 200 and b'id="root"' in page.read()
        series_url = f"{origin}/dicom-web/studies/{first}/series"
        with urllib.request.urlopen(series_url, timeout=10) as answer:
            numbers = {str(s["00200011"]["Value"][0]) for s in json.loads(answer.read())}
        assert {SR_SERIES, HEATMAP_SERIES} <= numbers, numbers
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, "".join(lines) + demo.stdout.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    left = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert left.stdout == "", f"processes of the demo still run: {left.stdout}"


def test_demo_viewer_without_an_ohif_build_says_so_and_exits_2(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(LLNM_NODE_EXE), "demo", "--viewer", "--ohif-dir", str(tmp_path / "no-build")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "the viewer cannot start: no OHIF build in" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr
