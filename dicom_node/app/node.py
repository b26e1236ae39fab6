"""The whole node in one process: database, spool, listener, admin API, watcher, workers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from db import exports, jobs
from db.migrate import upgrade
from db.models import utcnow
from db.session import Database
from dicom_node.api.app import create_app
from dicom_node.api.server import ApiServer
from dicom_node.app.listeners import ListenerProcesses, ListenerSpec, open_listener
from dicom_node.app.wiring import distributed_app, job_runner, local_notices
from dicom_node.network.completion import CompletionWatcher, Stalled
from dicom_node.network.exporter import Exporter
from dicom_node.network.listener import (
    LISTEN_BACKLOG,
    DicomListener,
    configure_reception,
    listening_socket,
)
from dicom_node.network.spool import Spool
from dicom_node.settings import Settings
from imaging.dicom_files import keep_header_values_out_of_logs
from pipeline.celery_executor import CeleryExecutor, QueuedNotices
from pipeline.executors import Executor, InProcessExecutor
from pipeline.stage import Stage

log = logging.getLogger(__name__)


class Node:
    """Start and stop everything ``llnm-node serve`` runs.

    Parameters
    ----------
    settings
        The node's settings.
    stages
        The pipeline's stages (default: the full pipeline).
    durable
        False gives the spool and the database no fsyncs (see ``Spool`` and
        ``Database``). It exists only so that the ingest benchmark can price
        durability; it is never a node setting.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        stages: Sequence[Stage[Any, Any]] | None = None,
        durable: bool = True,
    ):
        self.settings = settings
        self.database = Database(settings.resolved_database_url, durable=durable)
        self.spool = Spool(settings.data_dir / "spool", durable=durable)
        app = distributed_app(settings)
        self.distributed = app is not None
        calling_ae = settings.export.calling_ae_title or settings.dicom.ae_title
        self.exporter = Exporter(
            database=self.database,
            spool=self.spool.layout,
            settings=settings.export,
            calling_ae=calling_ae,
        )
        self.executor: Executor
        if app is None:
            runner = job_runner(
                settings, self.database, notices=local_notices(settings), stages=stages
            )
            self.executor = InProcessExecutor(
                runner, workers=settings.executor.workers, finished=self.exporter.wake
            )
        else:
            runner = job_runner(settings, self.database, notices=QueuedNotices(app), stages=stages)
            self.executor = CeleryExecutor(app, runner, self.database)
        self.watcher = CompletionWatcher(
            database=self.database,
            executor=self.executor,
            settings=settings.completion,
            calling_ae=calling_ae,
            stalled=Stalled(settings.executor.stall_timeout_s, runner.fail) if app else None,
        )
        self._listener_spec = ListenerSpec.of(
            settings, spool_root=self.spool.layout.root, durable=durable
        )
        self.listener: DicomListener | ListenerProcesses | None = None
        api = settings.api
        self.api = (
            ApiServer(
                create_app(settings, self.database, self.spool.layout),
                api.host,
                api.port,
                cert_file=api.tls.cert_file,
                key_file=api.tls.key_file,
            )
            if api.enabled
            else None
        )

    def start(self) -> None:
        """Migrate the database, recover interrupted jobs, then listen and work."""
        keep_header_values_out_of_logs()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool.prepare()
        upgrade(self.database)
        with self.database.session() as session:
            recovered = jobs.recover_interrupted_jobs(session, running_too=not self.distributed)
            released = exports.release_leases(session, now=utcnow())
        if recovered:
            log.warning("re-queued %d job(s) interrupted by the last stop", len(recovered))
        if released:
            log.warning("%d export(s) taken before the last stop are due again", released)
        processes = self.settings.dicom.processes
        if processes == 1:
            configure_reception(self.spool)
            dicom = self.settings.dicom
            listening = listening_socket(dicom.host, dicom.port)
            listening.listen(LISTEN_BACKLOG)
            self.listener = open_listener(
                self._listener_spec,
                database=self.database,
                spool=self.spool,
                wake=self.watcher.wake,
                listening=listening,
                shared=False,
            )
        else:
            self.listener = ListenerProcesses(
                self._listener_spec,
                count=processes,
                database=self.database,
                wake=self.watcher.wake,
            )
        self.listener.start()
        if self.api is not None:
            self.api.start()
        self.watcher.start()
        self.exporter.start()

    @property
    def port(self) -> int:
        """The DICOM port actually bound."""
        if self.listener is None:
            raise RuntimeError("listener not started")
        return self.listener.port

    @property
    def api_port(self) -> int | None:
        """The admin API's port actually bound; None when the API is off."""
        return None if self.api is None else self.api.port

    def stop(self) -> None:
        """Stop the API, listening, dispatching and exporting; let running jobs finish."""
        if self.api is not None:
            self.api.stop()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self.watcher.stop()
        self.exporter.stop()
        self.executor.shutdown(wait=True)
        self.database.dispose()
        log.info("node stopped")
