"""The exporter: delivers queued result objects to their destinations, with retries.

Each round takes the due exports, groups them by destination and hands each
group to the destination's sender (:mod:`dicom_node.network.senders`, one per
kind); what the sender says is recorded: sent, retried with backoff, or dead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from db import exports
from db.exports import DueExport
from db.models import ExportState, utcnow
from db.session import Database
from dicom_node.network.polling import Poller
from dicom_node.network.senders import Outcome, sender_for
from dicom_node.settings import ExportSettings
from pipeline.spool import SpoolLayout

log = logging.getLogger(__name__)

# Exports taken per round; the rest wait for the next one.
ROUND_LIMIT = 500


@dataclass(frozen=True)
class RoundSummary:
    """What one round did."""

    sent: int = 0
    retrying: int = 0
    dead: int = 0


class Exporter:
    """Polls the database for due exports and delivers them, one sender call per destination."""

    def __init__(
        self,
        *,
        database: Database,
        spool: SpoolLayout,
        settings: ExportSettings,
        calling_ae: str,
    ) -> None:
        self._database = database
        self._spool = spool
        self._settings = settings
        self._calling_ae = calling_ae
        self._poller = Poller("exporter", settings.poll_seconds, self._round, survives=(Exception,))

    def run_round(self, now: datetime | None = None) -> RoundSummary:
        """Send every export due at ``now`` (default: the current time) once."""
        now = now or utcnow()
        with self._database.session() as session:
            due = exports.due_exports(session, now=now, limit=ROUND_LIMIT)
        by_destination: dict[str, list[DueExport]] = defaultdict(list)
        for export in due:
            by_destination[export.destination].append(export)
        states: list[ExportState] = []
        for name, batch in by_destination.items():
            states.extend(self._deliver(name, batch, now))
        return RoundSummary(
            sent=states.count(ExportState.SENT),
            retrying=states.count(ExportState.PENDING),
            dead=states.count(ExportState.DEAD),
        )

    def _deliver(self, name: str, batch: list[DueExport], now: datetime) -> list[ExportState]:
        try:
            destination = self._settings.destination(name)
        except KeyError:
            return self._fail(batch, f"destination {name!r} is no longer configured", now)
        try:
            sender = sender_for(destination, self._calling_ae)
        except LookupError as exc:
            return self._fail(batch, str(exc), now)
        except OSError as exc:  # ssl.SSLError included; a secret that cannot be read
            return self._fail(batch, f"setting up destination {name!r} failed: {exc}", now)
        present: list[DueExport] = []
        missing: list[DueExport] = []
        for export in batch:
            (present if self._spool.path_of(export.path).is_file() else missing).append(export)
        states = self._bury_missing(missing)
        if not present:
            return states
        outcomes = sender.send([self._spool.path_of(e.path) for e in present])
        by_path = {outcome.path: outcome for outcome in outcomes}
        states.extend(self._record(name, present, by_path, now))
        return states

    def _record(
        self,
        name: str,
        batch: Sequence[DueExport],
        by_path: dict[Path, Outcome],
        now: datetime,
    ) -> list[ExportState]:
        sent: dict[int, int] = {}
        failed: dict[tuple[str, int | None], list[DueExport]] = defaultdict(list)
        for export in batch:
            outcome = by_path[self._spool.path_of(export.path)]
            if outcome.delivered and outcome.status is not None:
                sent[export.id] = outcome.status
            else:
                failed[(outcome.error or "not delivered", outcome.status)].append(export)
        if sent:
            with self._database.session() as session:
                exports.mark_sent(session, statuses=sent)
            log.info("export: %d object(s) stored by %s", len(sent), name)
        states = [ExportState.SENT] * len(sent)
        for (error, status), exports_failed in failed.items():
            states.extend(self._fail(exports_failed, error, now, status=status))
        return states

    def _fail(
        self, batch: Sequence[DueExport], error: str, now: datetime, *, status: int | None = None
    ) -> list[ExportState]:
        with self._database.session() as session:
            states = [
                exports.mark_failed(
                    session,
                    export_id=export.id,
                    status=status,
                    error=error,
                    max_attempts=self._settings.max_attempts,
                    initial_backoff_s=self._settings.initial_backoff_s,
                    max_backoff_s=self._settings.max_backoff_s,
                    now=now,
                )
                for export in batch
            ]
        log.warning("export: %d object(s) not delivered: %s", len(batch), error)
        return states

    def _bury_missing(self, missing: Sequence[DueExport]) -> list[ExportState]:
        with self._database.session() as session:
            for export in missing:
                exports.mark_dead(
                    session,
                    export_id=export.id,
                    error=f"result file {export.path} is missing from the spool; "
                    "resending cannot re-create it",
                )
        if missing:
            log.error("export: %d result file(s) missing from the spool", len(missing))
        return [ExportState.DEAD] * len(missing)

    def _round(self) -> None:
        summary = self.run_round()
        if summary != RoundSummary():
            log.debug("exporter round: %s", summary)

    def wake(self) -> None:
        """Run the next round now (a job may have queued results) instead of at the next poll."""
        self._poller.wake()

    def start(self) -> None:
        """Start polling in a background thread."""
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and wait for the current round."""
        self._poller.stop()
