"""``llnm-node demo``: the whole node on the embedded default, fed phantoms and vendor files."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file
from rich.console import Console
from rich.table import Table

from db import queries
from db.models import TERMINAL_STATES, JobState
from dicom_node import scu
from dicom_node.node import Node
from dicom_node.settings import CompletionSettings, DicomSettings, Settings
from pipeline.phantom import PhantomOptions, make_case

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
PHANTOMS = (
    PhantomOptions(),
    PhantomOptions(rgb=True),
    PhantomOptions(with_regions=False),
)


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


def run_demo(console: Console, data_dir: Path | None) -> int:
    """Run the demo; returns the process exit code (0 when every job finished)."""
    with tempfile.TemporaryDirectory(prefix="llnm-demo-") as scratch:
        root = data_dir or Path(scratch)
        settings = Settings(
            data_dir=root,
            min_free_disk_mb=DEMO_MIN_FREE_MB,
            dicom=DicomSettings(host="127.0.0.1", port=0),
            completion=CompletionSettings(quiet_seconds=DEMO_QUIET_SECONDS, poll_seconds=0.5),
        )
        node = Node(settings)
        node.start()
        try:
            return _exercise(console, node, settings)
        finally:
            node.stop()


def _exercise(console: Console, node: Node, settings: Settings) -> int:
    console.print(
        f"node {settings.dicom.ae_title} listening on 127.0.0.1:{node.port}, "
        f"data in {settings.data_dir}"
    )
    peer = scu.Peer(
        host="127.0.0.1", port=node.port, called_ae=settings.dicom.ae_title, calling_ae="DEMO_PACS"
    )
    console.print(f"C-ECHO: 0x{scu.echo(peer):04X}")
    sent = Table("file", "status", title="C-STORE to the node")
    outbox = settings.data_dir / "demo-outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    for outcome in scu.send_files(peer, _phantom_paths(outbox) + _sample_paths()):
        status = "-" if outcome.status is None else f"0x{outcome.status:04X}"
        sent.add_row(outcome.path.name, status + (f" {outcome.error}" if outcome.error else ""))
    console.print(sent)
    console.print(
        f"waiting for studies to settle ({DEMO_QUIET_SECONDS:.0f} s quiet) and jobs to run"
    )
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while True:
        with node.database.session() as session:
            jobs = queries.list_jobs(session)
        if jobs and all(JobState(j.state) in TERMINAL_STATES for j in jobs):
            break
        if time.monotonic() > deadline:
            console.print("[red]jobs did not finish in time[/red]")
            return 1
        time.sleep(0.5)
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
        title="Jobs (intake, deidentify, crop, segment, features, infer)",
    )
    with node.database.session() as session:
        for job in jobs:
            detail = queries.job_detail(session, job_id=job.id)
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
    console.print(results)
    return 0 if all(j.state == JobState.DONE for j in jobs) else 1


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


def _result_cell(result: queries.ResultRow | None) -> str:
    """The LLNM probability and risk stage, or the outcome that explains why there is none."""
    if result is None:
        return "-"
    if result.probability is None:
        return result.outcome
    label = " NOT FOR CLINICAL USE" if result.synthetic_bundle else ""
    return f"LLNM {result.probability:.2f}, stage {result.risk_stage}{label}"
