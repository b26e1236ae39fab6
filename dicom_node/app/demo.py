"""``llnm-node demo``: the whole node on the embedded default, fed phantoms and vendor files."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from rich.console import Console
from rich.table import Table

from db import exports, listings
from db.models import TERMINAL_STATES, ExportState, JobState
from dicom_node.app.node import Node
from dicom_node.app.viewer import VIEWER_AE, Viewer
from dicom_node.network import scu
from dicom_node.settings import (
    ApiSettings,
    CompletionSettings,
    DicomSettings,
    DimseDestination,
    ExportSettings,
    Settings,
)
from imaging.png import write_png
from imaging.scope_reasons import outcome_text
from phantoms import ENCODINGS, make_case

# Real vendor files shipped by the PyPI package pydicom-data: GE (JPEG 2000 and
# uncompressed RGB with the same SOP Instance UID, so one is a duplicate), Aloka
# (palette colour, little and big endian), Philips (RLE), SonoSite (JPEG cine).
SAMPLE_FILES = (
    "US1_J2KR.dcm",
    "US1_UNCR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "OBXXXX1A_rle.dcm",
    "color3d_jpeg_baseline.dcm",
    "CT_small.dcm",  # not ultrasound: refused with 0x0122
)
DEMO_QUIET_SECONDS = 2.0
DEMO_TIMEOUT_S = 120.0
DEMO_MIN_FREE_MB = 50.0
DEMO_PACS_AE = "DEMO_PACS"
DEMO_PACS_DESTINATION = "demo-pacs"  # the export destination of the demo PACS


def _sample_paths() -> list[Path]:
    paths = []
    for name in SAMPLE_FILES:
        found = get_testdata_file(name, download=False)
        if found is None:
            raise FileNotFoundError(
                f"sample file {name} not found: install the pydicom-data package "
                "(bash scripts/setup.sh does)"
            )
        paths.append(Path(str(found)))
    return paths


# Synthetic thyroid studies (two views + report SR each): grey with regions, RGB, and one
# without a Sequence of Ultrasound Regions (cropped by the detector, uncalibrated).
PHANTOMS = ENCODINGS


def _phantom_paths(folder: Path) -> list[Path]:
    paths = []
    for seed, options in enumerate(PHANTOMS, start=1):
        case = make_case(seed, options)
        datasets = [*case.datasets, *([case.report_dataset] if case.report_dataset else [])]
        for n, dataset in enumerate(datasets):
            path = folder / f"phantom{seed}_{n}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


class DemoPacs:
    """The receiving end of the demo: a C-STORE SCP that keeps what the node sends back.

    Objects are saved as ``study-K/<modality>_<series number>_<instance number>.dcm``,
    K counting studies in order of arrival.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received: dict[str, Path] = {}  # SOP Instance UID -> file
        self._studies: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ae = AE(ae_title=DEMO_PACS_AE)
        self._ae.supported_contexts = StoragePresentationContexts
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        server = self._ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None  # block=False returns the running server
        self._server = server
        return int(server.server_address[1])

    def _store(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            study = self._studies.setdefault(dataset.StudyInstanceUID, len(self._studies) + 1)
            name = f"{dataset.Modality}_{dataset.SeriesNumber}_{dataset.InstanceNumber}.dcm"
            path = self.folder / f"study-{study}" / name
            path.parent.mkdir(exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            self.received[str(dataset.SOPInstanceUID)] = path
        return 0x0000

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()


def run_demo(console: Console, data_dir: Path | None, ohif_dir: Path | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every job finished).

    With ``ohif_dir`` (an OHIF build) the studies and their results also go to a
    viewer (Orthanc with DICOMweb, OHIF in front), which runs until Ctrl-C.
    """
    with tempfile.TemporaryDirectory(prefix="llnm-demo-") as scratch, ExitStack() as stack:
        root = data_dir or Path(scratch)
        pacs = DemoPacs(root / "demo-pacs")
        pacs_port = pacs.start()
        stack.callback(pacs.stop)
        viewer = None
        if ohif_dir is not None:
            viewer = stack.enter_context(Viewer(root / "viewer", ohif_dir))
        destinations = [
            DimseDestination(
                name=DEMO_PACS_DESTINATION, ae_title=DEMO_PACS_AE, host="127.0.0.1", port=pacs_port
            )
        ]
        if viewer is not None:
            destinations.append(
                DimseDestination(
                    name="viewer",
                    ae_title=VIEWER_AE,
                    host="127.0.0.1",
                    port=viewer.dicom_port,
                    always=True,  # whoever sent the study
                )
            )
        settings = Settings(
            data_dir=root,
            min_free_disk_mb=DEMO_MIN_FREE_MB,
            dicom=DicomSettings(host="127.0.0.1", port=0),
            completion=CompletionSettings(quiet_seconds=DEMO_QUIET_SECONDS, poll_seconds=0.5),
            api=ApiSettings(port=0),
            export=ExportSettings(
                destinations=destinations, initial_backoff_s=0.5, poll_seconds=0.2
            ),
        )
        node = Node(settings)
        stack.callback(node.stop)
        node.start()
        if viewer is not None:
            calling_ae = settings.export.calling_ae_title or settings.dicom.ae_title
            viewer.admit("llnm-node", calling_ae, node.port)
        console.print(
            f"node {settings.dicom.ae_title} listening on 127.0.0.1:{node.port}, "
            f"results go back to {DEMO_PACS_AE}"
            + (f" and the viewer's Orthanc ({VIEWER_AE})" if viewer else "")
            + f" on 127.0.0.1, data in {root}"
        )
        sent = _send_studies(console, node, settings)
        code = _exercise(console, node, settings, pacs)
        if viewer is not None:
            _show_in_viewer(console, viewer, sent)
        return code


def _send_studies(console: Console, node: Node, settings: Settings) -> list[Path]:
    """Send the phantoms and vendor files to the node; the files it accepted."""
    peer = scu.Peer(
        host="127.0.0.1", port=node.port, called_ae=settings.dicom.ae_title, calling_ae=DEMO_PACS_AE
    )
    console.print(f"C-ECHO: 0x{scu.echo(peer):04X}")
    sent = Table("file", "status", title=f"C-STORE from {DEMO_PACS_AE} to the node")
    outbox = settings.data_dir / "demo-outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    outcomes = scu.send_files(peer, _phantom_paths(outbox) + _sample_paths())
    for outcome in outcomes:
        status = "-" if outcome.status is None else f"0x{outcome.status:04X}"
        sent.add_row(outcome.path.name, status + (f" {outcome.error}" if outcome.error else ""))
    console.print(sent)
    return [outcome.path for outcome in outcomes if outcome.ok]


def _settled(node: Node) -> list[listings.JobRow] | None:
    """The jobs once every one is finished and every export delivered or dead, else None."""
    with node.database.session() as session:
        jobs = listings.list_jobs(session)
        pending = exports.list_exports(session, state=ExportState.PENDING)
    if jobs and not pending and all(JobState(j.state) in TERMINAL_STATES for j in jobs):
        return jobs
    return None


def _exercise(console: Console, node: Node, settings: Settings, pacs: DemoPacs) -> int:
    console.print(
        f"waiting for studies to settle ({DEMO_QUIET_SECONDS:.0f} s quiet), jobs to run "
        "and results to come back"
    )
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while (jobs := _settled(node)) is None:
        if time.monotonic() > deadline:
            console.print("[red]jobs or exports did not finish in time[/red]")
            return 1
        time.sleep(0.5)
    console.print(_jobs_table(node, jobs))
    console.print(_returned_table(node, jobs, pacs))
    return 0 if all(j.state == JobState.DONE for j in jobs) else 1


def _show_in_viewer(console: Console, viewer: Viewer, sent: list[Path]) -> None:
    """Store the studies the node accepted in the viewer, print their URLs, wait for Ctrl-C."""
    studies: dict[str, list[str]] = {}
    for path in sent:
        viewer.upload(path)
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        studies.setdefault(uid, []).append(path.name)
    console.print(f"\nThe studies with the node's results in OHIF ({viewer.ohif.url}):")
    for uid, names in studies.items():
        console.print(f"  {', '.join(names)}:\n    {viewer.study_url(uid)}", soft_wrap=True)
    console.print("Press Ctrl-C to stop the viewer.")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    console.print("stopping")


def _jobs_table(node: Node, jobs: list[listings.JobRow]) -> Table:
    results = Table(
        "job",
        "patient",
        "state",
        "images",
        "report",
        "cropped",
        "nodule",
        "capsule",
        "result",
        "error",
        title="Jobs (intake, deidentify, crop, segment, features, infer, report)",
    )
    with node.database.session() as session:
        for job in jobs:
            detail = listings.job_detail(session, job_id=job.id)
            done = {
                (e.detail or {}).get("stage"): (e.detail or {}).get("summary", {})
                for e in detail.events
                if e.kind == "stage.done"
            }
            intake, crop, features = (done.get(n, {}) for n in ("intake", "crop", "features"))
            results.add_row(
                str(job.id),
                job.patient_pseudonym,
                job.state,
                str(intake.get("ultrasound_images", "-")),
                "yes" if intake.get("report_found") else "no",
                _crop_cell(crop),
                _nodule_cell(features),
                _capsule_cell(features),
                _result_cell(detail.result),
                (job.error or "")[:60],
            )
    return results


def _returned_table(node: Node, jobs: list[listings.JobRow], pacs: DemoPacs) -> Table:
    """What came back to the demo PACS per job: the SR, the heatmaps as PNG, contributions."""
    table = Table("job", "result", "contributions (%)", "files", title=f"Back in {DEMO_PACS_AE}")
    received = pacs.received
    with node.database.session() as session:
        for job in jobs:
            detail = listings.job_detail(session, job_id=job.id)
            sent = exports.list_exports(session, job_id=job.id, destination=DEMO_PACS_DESTINATION)
            files = sorted(
                (received[e.sop_instance_uid] for e in sent if e.sop_instance_uid in received),
                key=lambda path: (not path.name.startswith("SR"), path.name),
            )
            table.add_row(
                str(job.id),
                _result_cell(detail.result),
                _contributions_cell(detail.result),
                "\n".join(str(_viewable(path)) for path in files) or "-",
            )
    return table


def _viewable(path: Path) -> Path:
    """A received SC as a PNG beside it (what a person opens); other objects as they are."""
    dataset = dcmread(path)
    if dataset.SOPClassUID != SecondaryCaptureImageStorage:
        return path
    return write_png(path.with_suffix(".png"), dataset.pixel_array)


def _contributions_cell(result: listings.ResultRow | None) -> str:
    """The three largest per-input contributions."""
    if result is None or not result.contributions:
        return "-"
    top = sorted(result.contributions.items(), key=lambda kv: -float(kv[1]))[:3]
    return ", ".join(f"{name} {float(value):.0f}" for name, value in top)


def _crop_cell(crop: dict[str, Any]) -> str:
    if not crop:
        return "-"
    cell = f"{crop['images']} ({crop['calibrated']} calibrated)"
    return cell + (f", {len(crop['skipped'])} skipped" if crop["skipped"] else "")


def _index_nodules(features: dict[str, Any]) -> list[dict[str, Any]]:
    return [view["index"] for view in features.get("views", []) if view.get("index")]


def _nodule_cell(features: dict[str, Any]) -> str:
    """Where the index nodule is: lobe (transverse view) and third (longitudinal view)."""
    if not features:
        return "-"
    found = _index_nodules(features)
    if not found:
        return "none found"
    places = [n[k] for n in found for k in ("lobe", "third") if isinstance(n[k], str)]
    return ", ".join(places) or "found"


def _capsule_cell(features: dict[str, Any]) -> str:
    """The smallest nodule-capsule distance over the views, with its unit."""
    distances = [
        (value, key.rsplit("_", 1)[1])
        for nodule in _index_nodules(features)
        for key, value in nodule["location"].items()
        if key.startswith("capsule_distance_")
    ]
    if not distances:
        return "-"
    value, unit = min(distances)
    return f"{value:.1f} {unit}"


def _result_cell(result: listings.ResultRow | None) -> str:
    """The LLNM probability and risk stage, or the outcome that explains why there is none."""
    if result is None:
        return "-"
    if result.probability is None:
        return outcome_text(result.outcome, result.reason)
    label = " NOT FOR CLINICAL USE" if result.synthetic_bundle else ""
    return f"LLNM {result.probability:.2f}, stage {result.risk_stage}{label}"
