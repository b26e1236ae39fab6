"""Result latency: last instance of a study stored -> its SR stored in Orthanc.

The embedded default (SQLite, in-process worker, the demo bundle with the tiny
LLNM-Net) runs in this process; a real Orthanc (Debian package) is the PACS the
results go back to. Phantom studies (two views and a report SR each) are sent
one at a time by C-STORE with Orthanc's AE title as calling AE, as Orthanc's
routing would; the clock starts when the node acknowledges the last instance
and stops when Orthanc's REST API lists the SR in that study (polled every
20 ms). The completion quiet time (``--quiet-s``) is subtracted: it is a
setting, not work. Stage times come from the job's audit trail.

Run::

    .venv/bin/python benchmarks/report_latency.py [--studies 20] [--quiet-s 1.0]
        [--out benchmarks/out/report_latency.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import free_port, wait_for
from orthanc_peer import ORTHANC_AE, Orthanc, running_orthanc
from report_cases import write_case

from db import listings
from dicom_node.app.node import Node
from dicom_node.network import scu
from dicom_node.settings import Settings
from phantoms import make_case

FIRST_SEED = 5000
POLL_S = 0.02
TIMEOUT_S = 120.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait_for_sr(orthanc: Orthanc, study_uid: str) -> float:
    def has_sr() -> bool:
        return any(
            s["MainDicomTags"].get("Modality") == "SR"
            and s["MainDicomTags"].get("SeriesNumber") == "9901"
            for s in orthanc.series_of_study(study_uid)
        )

    wait_for(
        has_sr,
        timeout=TIMEOUT_S,
        what="the SR of a study in Orthanc",
        interval=POLL_S,
        describe=orthanc.log_tail,
    )
    return time.monotonic()


def _stage_seconds(node: Node) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {}
    with node.database.session() as session:
        for job in listings.list_jobs(session):
            for event in listings.job_detail(session, job_id=job.id).events:
                if event.kind == "stage.done" and event.detail:
                    stage = event.detail["stage"]
                    seconds.setdefault(stage, []).append(float(event.detail["seconds"]))
    return seconds


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    orthanc_port = free_port()
    settings = Settings(
        data_dir=workdir / "node",
        min_free_disk_mb=50,
        dicom={"host": "127.0.0.1", "port": 0},
        completion={"quiet_seconds": args.quiet_s, "poll_seconds": 0.05},
        api={"port": 0},
        export={
            "destinations": [
                {"name": "pacs", "ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": orthanc_port}
            ],
            "poll_seconds": 0.05,
        },
    )
    node = Node(settings)
    node.start()
    latencies = []
    try:
        with running_orthanc(
            workdir / "orthanc",
            dicom_port=orthanc_port,
            node_ae=settings.dicom.ae_title,
            node_port=node.port,
            route_stable_studies=False,
        ) as orthanc:
            peer = scu.Peer(
                host="127.0.0.1",
                port=node.port,
                called_ae=settings.dicom.ae_title,
                calling_ae=ORTHANC_AE,
            )
            for seed in track(range(FIRST_SEED, FIRST_SEED + args.studies), description="studies"):
                case = make_case(seed)
                paths = write_case(case, workdir / "outbox" / str(seed))
                outcomes = scu.send_files(peer, paths)
                stored = time.monotonic()
                if not all(o.ok for o in outcomes):
                    raise RuntimeError(f"the node refused a phantom instance: {outcomes}")
                arrived = _wait_for_sr(orthanc, str(case.datasets[0].StudyInstanceUID))
                latencies.append(arrived - stored - args.quiet_s)
        stages = _stage_seconds(node)
    finally:
        node.stop()
    return {
        "studies": args.studies,
        "quiet_s_excluded": args.quiet_s,
        "latency_s": {
            "median": statistics.median(latencies),
            "p95": _percentile(latencies, 0.95),
            "min": min(latencies),
            "max": max(latencies),
            "all": [round(v, 3) for v in latencies],
        },
        "stage_median_s": {k: statistics.median(v) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--quiet-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/report_latency.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llnm-latency-") as scratch:
        result = run(args, Path(scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console = Console()
    table = Table("measure", "seconds", title=f"Result latency over {args.studies} studies")
    for key in ("median", "p95", "min", "max"):
        seconds = result["latency_s"][key]
        table.add_row(f"last instance stored -> SR in Orthanc, {key}", f"{seconds:.2f}")
    for stage, median in result["stage_median_s"].items():
        table.add_row(f"  stage {stage}, median", f"{median:.3f}")
    console.print(table)
    console.print(f"(completion quiet time {args.quiet_s:.1f} s excluded; written to {args.out})")


if __name__ == "__main__":
    main()
