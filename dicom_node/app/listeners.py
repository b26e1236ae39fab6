"""The DICOM listener in the node's process or in ``dicom.listener_processes`` child processes.

Child processes accept from one listening socket that the parent binds and
passes down, so a connection waits in one queue for whichever process is least
busy (``SharedSocketServer``), and a child's death loses only the associations
it had accepted. They coordinate only through the database and the spool:
deduplication by the stripe locks and the database's unique SOP Instance UID,
the association limit by slot locks (``network/process_locks.py``), SQLite
writes by the database's writer lock. The completion watcher, executor,
exporter and API stay in the parent; a child wakes the watcher by writing a
byte to a pipe.

Protocol: a child reads its ``ListenerSpec`` as one JSON line on stdin and
answers ``prepared`` once it could serve; the parent makes the socket listen
once every child is prepared and then writes ``listen`` to each, which answers
``ready`` once it accepts. So the node answers its first association with all
its processes. A child stops when stdin closes (the parent stopping or dying)
or on SIGTERM. The parent restarts a child that dies: at once if it ran for
``STABLE_S``, else (and after a failed restart) when a back-off of 1, 2, 4 ... up to
60 seconds is over, so a child that cannot start does not flood the event log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from db import events
from db.models import EventLevel
from db.session import Database
from dicom_node.network.ingest import Ingestor, ReceptionLimits
from dicom_node.network.listener import LISTEN_BACKLOG, DicomListener, listening_socket
from dicom_node.network.process_locks import AssociationSlots, StripeLocks
from dicom_node.network.releases import ReleasedStudies
from dicom_node.network.spool import Spool
from dicom_node.settings import DicomSettings, Settings

log = logging.getLogger(__name__)

PREPARED = "prepared"
LISTEN = "listen"
READY = "ready"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SUPERVISE_INTERVAL_S = 0.5
# A child that ran this long before it died is restarted at once; one that died sooner, or
# a restart that failed, waits 1, 2, 4 ... up to RESTART_BACKOFF_MAX_S seconds.
STABLE_S = 30.0
RESTART_BACKOFF_MAX_S = 60.0


def restart_delay(failures: int) -> float:
    """Seconds to wait before restarting a child after ``failures`` failures in a row."""
    return 0.0 if failures <= 0 else min(RESTART_BACKOFF_MAX_S, 2.0 ** (failures - 1))


@dataclass
class _Slot:
    """One child process's place: the child, and while it is dead, when to start another."""

    child: subprocess.Popen[str]
    started_at: float
    failures: int = 0  # quick deaths and failed restarts in a row
    restart_at: float | None = None  # None while the child is meant to be running


@dataclass(frozen=True)
class ListenerSpec:
    """What a listener needs of the settings, as JSON for a child process."""

    dicom: dict[str, Any]
    database_url: str
    spool_root: str
    min_free_bytes: int
    max_instance_bytes: int
    max_inflated_bytes: int
    queried: tuple[str, ...]
    durable: bool
    log_level: str

    @classmethod
    def of(cls, settings: Settings, *, spool_root: Path, durable: bool) -> ListenerSpec:
        """The listener's part of ``settings``."""
        dicom = settings.dicom
        return cls(
            dicom=dicom.model_dump(mode="json"),
            database_url=settings.resolved_database_url,
            spool_root=str(spool_root),
            min_free_bytes=int(settings.min_free_disk_mb * 1024 * 1024),
            max_instance_bytes=int(dicom.max_instance_mb * 1024 * 1024),
            max_inflated_bytes=int(dicom.max_inflated_mb * 1024 * 1024),
            queried=tuple(c.ae_title for c in settings.completion.query_callers),
            durable=durable,
            log_level=settings.log_level,
        )

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> ListenerSpec:
        """The spec a parent wrote with ``to_json``."""
        data = json.loads(line)
        return cls(**{**data, "queried": tuple(data["queried"])})


def open_listener(
    spec: ListenerSpec,
    *,
    database: Database,
    spool: Spool,
    wake: Callable[[], None],
    listening: socket.socket,
    shared: bool,
) -> DicomListener:
    """A listener over ``database`` and ``spool`` on ``listening`` (not started).

    ``shared``: other processes accept from the same socket.
    """
    settings = DicomSettings.model_validate(spec.dicom)
    locks = spool.layout.root / "locks"
    ingestor = Ingestor(
        spool=spool,
        database=database,
        locks=StripeLocks(locks / "instances"),
        min_free_bytes=spec.min_free_bytes,
        limits=ReceptionLimits(
            max_instance_bytes=spec.max_instance_bytes,
            max_inflated_bytes=spec.max_inflated_bytes,
        ),
    )
    released = ReleasedStudies(database=database, queried=frozenset(spec.queried), wake=wake)
    slots = AssociationSlots(locks / "associations", settings.max_associations)
    return DicomListener(settings, ingestor, released, slots, listening=listening, shared=shared)


class ListenerProcesses:
    """Runs and supervises ``count`` listener child processes on one shared port.

    Parameters
    ----------
    spec
        What each child listens with; its port 0 picks one free port for all.
    count
        How many children.
    database
        Where a child's restart is recorded.
    wake
        Called when a child has marked released studies (the watcher's wake).
    """

    def __init__(
        self, spec: ListenerSpec, *, count: int, database: Database, wake: Callable[[], None]
    ) -> None:
        self._spec = spec
        self._count = count
        self._database = database
        self._wake = wake
        self._slots: list[_Slot] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._socket = listening_socket(str(spec.dicom["host"]), int(spec.dicom["port"]))
        self.port = int(self._socket.getsockname()[1])
        self._wake_read, self._wake_write = os.pipe()
        self._threads = [
            threading.Thread(target=self._relay_wakes, name="llnm-listener-wakes", daemon=True),
            threading.Thread(target=self._supervise, name="llnm-listener-supervisor", daemon=True),
        ]

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        with self._lock:
            return [slot.child.pid for slot in self._slots if slot.restart_at is None]

    def start(self) -> None:
        """Start every child, then listen once all are prepared; returns when each accepts.

        Raises
        ------
        OSError
            If a child does not come up (every child started is stopped).
        """
        launched: list[subprocess.Popen[str]] = []
        try:
            for _ in range(self._count):
                launched.append(self._launch())
            for child in launched:
                _expect(child, PREPARED)
            self._socket.listen(LISTEN_BACKLOG)
            for child in launched:
                _let_listen(child)
        except OSError:
            for child in launched:
                _end(child, grace_s=0.0)
            raise
        with self._lock:
            now = time.monotonic()
            self._slots.extend(_Slot(child, started_at=now) for child in launched)
        for thread in self._threads:
            thread.start()
        log.info(
            "listening on %s:%d in %d processes", self._spec.dicom["host"], self.port, self._count
        )

    def _launch(self) -> subprocess.Popen[str]:
        """Start a child and send it its spec (it prepares meanwhile)."""
        spec = replace(self._spec, dicom={**self._spec.dicom, "port": self.port})
        listening_fd = self._socket.fileno()
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "dicom_node.app.listener_process"),
                *(str(self._wake_write), str(listening_fd)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(self._wake_write, listening_fd),
        )
        assert child.stdin is not None  # PIPE
        child.stdin.write(spec.to_json() + "\n")
        child.stdin.flush()
        return child

    def _spawn(self) -> subprocess.Popen[str]:
        """A replacement child, accepting on the already listening socket."""
        child = self._launch()
        try:
            _expect(child, PREPARED)
            _let_listen(child)
        except OSError:
            _end(child, grace_s=0.0)
            raise
        return child

    def _relay_wakes(self) -> None:
        while os.read(self._wake_read, 512):
            if self._stopping.is_set():
                return
            self._wake()

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                for slot in self._slots:
                    if self._stopping.is_set():
                        return
                    self._tend(slot, time.monotonic())

    def _tend(self, slot: _Slot, now: float) -> None:
        """Notice a dead child and start another when its back-off is over (under the lock)."""
        if slot.restart_at is None:
            code = slot.child.poll()
            if code is None:
                return
            slot.failures = slot.failures + 1 if now - slot.started_at < STABLE_S else 0
            delay = restart_delay(slot.failures)
            slot.restart_at = now + delay
            self._record(
                "listener.restarted",
                f"listener process {slot.child.pid} ended with exit code {code}; "
                f"starting another{f' in {delay:.0f} s' if delay else ''}",
                {"pid": slot.child.pid, "exit_code": code, "restart_in_s": delay},
            )
        if now < slot.restart_at:
            return
        try:
            slot.child = self._spawn()
        except OSError as exc:
            slot.failures += 1
            delay = restart_delay(slot.failures)
            slot.restart_at = time.monotonic() + delay
            self._record(
                "listener.restart_failed",
                f"listener process not restarted ({exc}); trying again in {delay:.0f} s",
                {"error": str(exc), "retry_in_s": delay},
            )
            return
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _record(self, kind: str, message: str, detail: dict[str, Any]) -> None:
        log.error("%s", message)
        try:
            with self._database.session() as session:
                events.record_event(
                    session, kind=kind, message=message, level=EventLevel.ERROR, detail=detail
                )
        except SQLAlchemyError as exc:
            log.error("event %s not recorded: %s", kind, exc)

    def stop(self) -> None:
        """Stop every child (stdin closed, then SIGTERM, then SIGKILL) and free the port."""
        self._stopping.set()
        with self._lock:
            children = [slot.child for slot in self._slots]
        for child in children:  # all told first, so that they stop together
            if child.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    child.stdin.close()
        for child in children:
            _end(child, grace_s=STOP_TIMEOUT_S)
        os.write(self._wake_write, b"!")  # ends the relay thread
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        os.close(self._wake_write)
        os.close(self._wake_read)
        self._socket.close()


def _expect(child: subprocess.Popen[str], answer: str) -> None:
    """Wait for ``child`` to write the line ``answer``.

    Raises
    ------
    OSError
        If it writes something else, ends, or says nothing within the start timeout.
    """
    assert child.stdout is not None  # PIPE
    readable, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
    if not readable or child.stdout.readline().strip() != answer:
        raise OSError(f"listener process {child.pid} did not start (no {answer!r} from it)")


def _let_listen(child: subprocess.Popen[str]) -> None:
    """Tell a prepared ``child`` to accept, and wait until it does.

    Raises
    ------
    OSError
        If it cannot be told or does not answer ``ready``.
    """
    assert child.stdin is not None  # PIPE
    try:
        child.stdin.write(LISTEN + "\n")
        child.stdin.flush()
    except BrokenPipeError as exc:
        raise OSError(f"listener process {child.pid} ended before it listened") from exc
    _expect(child, READY)


def _end(child: subprocess.Popen[str], *, grace_s: float) -> None:
    """Close its stdin, give ``child`` ``grace_s`` to exit, then SIGTERM, then SIGKILL."""
    if child.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
    for step, wait_s in ((None, grace_s), (child.terminate, STOP_TIMEOUT_S), (child.kill, None)):
        if step is not None:
            step()
        try:
            child.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    if child.stdout is not None:
        child.stdout.close()
