"""``llnm-node serve``, ``worker``, ``demo`` and ``db upgrade``: running the node."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from db.migrate import upgrade
from db.session import Database
from dicom_node.cli.common import ConfigOption, console, fail, settings_or_exit, setup_logging

if TYPE_CHECKING:
    from dicom_node.app.node import Node

db_app = typer.Typer(no_args_is_help=True, help="Job database maintenance.")


def serve(config: ConfigOption = None) -> None:
    """Run the node: DICOM listener, completion watcher and job workers, until SIGTERM."""
    from dicom_node.app.node import Node

    settings = settings_or_exit(config)
    setup_logging(settings.log_level)
    run_until_stopped(Node(settings))


def run_until_stopped(node: Node) -> None:
    """Start ``node``, run it until SIGTERM or SIGINT, then stop it."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node.start()
    except OSError as exc:
        node.stop()
        raise fail("cannot start", exc) from exc
    stop.wait()
    logging.getLogger(__name__).info("stop requested; shutting down")
    node.stop()


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: gpu (segment, infer), cpu (the rest).")
    ] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once (threads).")] = 1,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker for the distributed mode (needs executor.broker_url)."""
    from dicom_node.app.worker import run_worker

    settings = settings_or_exit(config)
    setup_logging(settings.log_level)
    try:
        run_worker(
            settings, [q.strip() for q in queues.split(",") if q.strip()], concurrency=concurrency
        )
    except ValueError as exc:
        raise fail("", exc, code=2) from exc


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's data here (default: a temporary folder).")
    ] = None,
    viewer: Annotated[
        bool,
        typer.Option(
            "--viewer",
            help="Also show the studies and results in OHIF (Orthanc with DICOMweb on "
            "loopback); prints each study's URL and runs until Ctrl-C.",
        ),
    ] = False,
    ohif_dir: Annotated[
        Path | None,
        typer.Option(help="OHIF's static build (default: the one scripts/setup.sh fetched)."),
    ] = None,
) -> None:
    """Start a node on the embedded default, send it sample ultrasound studies, show the jobs."""
    from dicom_node.app.demo import run_demo
    from dicom_node.app.viewer import ViewerError, default_ohif_dir

    setup_logging("WARNING")
    build = (ohif_dir or default_ohif_dir()) if viewer else None
    try:
        code = run_demo(console, data_dir, build)
    except ViewerError as exc:
        raise fail("the viewer cannot start", exc, code=2) from exc
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the job database schema to the newest revision."""
    settings = settings_or_exit(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(Database(settings.resolved_database_url))
    console.print("database is at the newest schema revision")
