"""The whole node in one process: database, spool, listener, watcher, executor and exporter."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from db import exports, queries
from db.migrate import upgrade
from db.models import utcnow
from db.session import Database
from dicom_node.completion import CompletionWatcher
from dicom_node.export import Exporter
from dicom_node.ingest import Ingestor
from dicom_node.server import DicomListener, configure_reception
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from models.bundle import clinical_use_label
from pipeline.dicom_files import keep_header_values_out_of_logs
from pipeline.executors import InProcessExecutor
from pipeline.graph import default_stages
from pipeline.report.inputs import ReportOptions
from pipeline.report.stage import Notices
from pipeline.runner import JobRunner, RetryPolicy
from pipeline.stage import Stage

log = logging.getLogger(__name__)


class Node:
    """Start and stop everything ``llnm-node serve`` runs."""

    def __init__(self, settings: Settings, *, stages: Sequence[Stage[Any, Any]] | None = None):
        self.settings = settings
        self.database = Database(settings.resolved_database_url)
        self.spool = Spool(settings.data_dir / "spool")
        report = ReportOptions(**settings.report.model_dump())
        destinations_for = settings.export.destinations_for
        runner = JobRunner(
            database=self.database,
            spool_root=self.spool.root,
            stages=default_stages(
                settings.model.bundle_dir,
                spool_root=self.spool.root,
                report=report,
                destinations_for=destinations_for,
            )
            if stages is None
            else stages,
            retry=RetryPolicy(
                max_attempts=settings.executor.max_attempts,
                backoff_s=settings.executor.retry_backoff_s,
            ),
            notices=Notices(
                report,
                self.spool.root,
                destinations_for,
                clinical_use_label(settings.model.bundle_dir),
            ),
        )
        self.executor = InProcessExecutor(runner, workers=settings.executor.workers)
        self.watcher = CompletionWatcher(
            database=self.database,
            executor=self.executor,
            quiet_seconds=settings.completion.quiet_seconds,
            poll_seconds=settings.completion.poll_seconds,
        )
        self.exporter = Exporter(
            database=self.database,
            spool_root=self.spool.root,
            settings=settings.export,
            calling_ae=settings.export.calling_ae_title or settings.dicom.ae_title,
        )
        self.listener = DicomListener(
            settings.dicom,
            Ingestor(
                spool=self.spool,
                database=self.database,
                min_free_bytes=int(settings.min_free_disk_mb * 1024 * 1024),
            ),
        )

    def start(self) -> None:
        """Migrate the database, recover interrupted jobs, then listen and work."""
        keep_header_values_out_of_logs()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool.prepare()
        upgrade(self.database)
        with self.database.session() as session:
            recovered = queries.recover_interrupted_jobs(session)
            released = exports.release_leases(session, now=utcnow())
        if recovered:
            log.warning("re-queued %d job(s) interrupted by the last stop", len(recovered))
        if released:
            log.warning("%d export(s) taken before the last stop are due again", released)
        configure_reception(self.spool)
        self.listener.start()
        self.watcher.start()
        self.exporter.start()

    @property
    def port(self) -> int:
        """The DICOM port actually bound."""
        return self.listener.port

    def stop(self) -> None:
        """Stop listening, dispatching and exporting; let running jobs finish."""
        self.listener.stop()
        self.watcher.stop()
        self.exporter.stop()
        self.executor.shutdown(wait=True)
        self.spool.close()
        self.database.dispose()
        log.info("node stopped")
