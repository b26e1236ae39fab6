"""Result latency: the PACS's send of a study returns -> the study's SR listed in the PACS.

A real Orthanc (Debian package) is the PACS: it holds each phantom study (two views
and a report SR), sends it to the node by C-STORE (its REST call
``/modalities/llnm/store``, synchronous: it returns once the association is
released), answers the node's C-FIND, and receives the results. The node runs in
this process with the shipped default settings (SQLite, one in-process worker, the
demo bundle with the tiny LLNM-Net, the default poll intervals and quiet time) plus
what a site configures: the listener's port, Orthanc as export destination and, unless
``--no-query``, as the caller asked for a study's size (``completion.query_callers``).
Studies go one at a time; the clock starts when Orthanc's send returns and stops when
Orthanc's REST API lists the SR in that study (polled every 20 ms). The job's audit
trail splits it: until the job is queued (completion), until it is done (the
pipeline), and the rest (the exporter's poll and the C-STORE back). It also says which
rule completed each study.

Run::

    .venv/bin/python benchmarks/report_latency.py [--studies 20] [--no-query] [--quiet-s S]
        [--out benchmarks/out/report_latency.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import free_port, wait_for
from orthanc_peer import ORTHANC_AE, Orthanc, running_orthanc
from report_cases import write_case

from db import listings, metrics
from db.models import utcnow
from dicom_node.app.node import Node
from dicom_node.settings import Settings
from phantoms import make_case

FIRST_SEED = 5000
POLL_S = 0.02
TIMEOUT_S = 120.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "p95": _percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
        "all": [round(v, 3) for v in values],
    }


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


def _upload(orthanc: Orthanc, paths: list[Path]) -> str:
    """Store the study in Orthanc (untimed); its Orthanc id."""
    ids = [orthanc.upload(path) for path in paths]
    return str(orthanc.get(f"/instances/{ids[0]}/study")["ID"])


def _newest_job_times(node: Node, sent_at: datetime) -> tuple[float, float, str]:
    """Seconds from ``sent_at`` to the newest job's ``job.queued`` and ``job.done``; its rule."""
    with node.database.session() as session:
        job = listings.list_jobs(session, limit=1)[0]
        events = listings.job_detail(session, job_id=job.id).events
    queued = next(e for e in events if e.kind == "job.queued")
    done = next(e for e in events if e.kind == "job.done")
    return (
        (queued.created_at - sent_at).total_seconds(),
        (done.created_at - sent_at).total_seconds(),
        str((queued.detail or {}).get("rule")),
    )


def _stage_seconds(node: Node) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {}
    with node.database.session() as session:
        for job in listings.list_jobs(session):
            for event in listings.job_detail(session, job_id=job.id).events:
                if event.kind == "stage.done" and event.detail:
                    stage = event.detail["stage"]
                    seconds.setdefault(stage, []).append(float(event.detail["seconds"]))
    return seconds


def _settings(args: argparse.Namespace, workdir: Path, orthanc_port: int) -> Settings:
    """The shipped defaults plus what a site sets: port, destination, the caller to ask."""
    pacs = {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": orthanc_port}
    completion: dict[str, Any] = {} if args.no_query else {"query_callers": [pacs]}
    if args.quiet_s is not None:
        completion["quiet_seconds"] = args.quiet_s
    return Settings(
        data_dir=workdir / "node",
        min_free_disk_mb=50,
        dicom={"host": "127.0.0.1", "port": 0},
        completion=completion,
        api={"port": 0},
        export={"destinations": [{"name": "pacs", **pacs}]},
    )


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    orthanc_port = free_port()
    settings = _settings(args, workdir, orthanc_port)
    node = Node(settings)
    node.start()
    latencies, to_queued, to_done = [], [], []
    rules: dict[str, int] = {}
    try:
        with running_orthanc(
            workdir / "orthanc",
            dicom_port=orthanc_port,
            node_ae=settings.dicom.ae_title,
            node_port=node.port,
            route_stable_studies=False,
        ) as orthanc:
            for seed in track(range(FIRST_SEED, FIRST_SEED + args.studies), description="studies"):
                case = make_case(seed)
                study = _upload(orthanc, write_case(case, workdir / "outbox" / str(seed)))
                orthanc.send_to_node(study)
                sent, sent_at = time.monotonic(), utcnow()
                arrived = _wait_for_sr(orthanc, str(case.datasets[0].StudyInstanceUID))
                latencies.append(arrived - sent)
                queued_s, done_s, rule = _newest_job_times(node, sent_at)
                to_queued.append(queued_s)
                to_done.append(done_s)
                rules[rule] = rules.get(rule, 0) + 1
        stages = _stage_seconds(node)
        with node.database.session() as session:
            completions = metrics.completions_by_rule(session)
    finally:
        node.stop()
    return {
        "studies": args.studies,
        "query_callers": not args.no_query,
        "quiet_seconds": settings.completion.quiet_seconds,
        "latency_s": _summary(latencies),
        "send_to_queued_s": _summary(to_queued),
        "send_to_done_s": _summary(to_done),
        "completed_by_rule": rules,
        "metric_study_completions": {rule.value: n for rule, n in completions.items()},
        "stage_median_s": {k: statistics.median(v) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument(
        "--no-query", action="store_true", help="no completion.query_callers: the quiet time"
    )
    parser.add_argument(
        "--quiet-s", type=float, default=None, help="completion.quiet_seconds (default: shipped)"
    )
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
        table.add_row(f"Orthanc's send returns -> SR in Orthanc, {key}", f"{seconds:.2f}")
    table.add_row("  -> job queued, median", f"{result['send_to_queued_s']['median']:.3f}")
    table.add_row("  -> job done, median", f"{result['send_to_done_s']['median']:.3f}")
    for stage, median in result["stage_median_s"].items():
        table.add_row(f"  stage {stage}, median", f"{median:.3f}")
    console.print(table)
    rules = ", ".join(f"{rule}: {n}" for rule, n in sorted(result["completed_by_rule"].items()))
    console.print(
        f"completed by {rules} (llnm_study_completions: {result['metric_study_completions']}); "
        f"quiet time {result['quiet_seconds']:.1f} s; written to {args.out}"
    )


if __name__ == "__main__":
    main()
