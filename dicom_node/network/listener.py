"""Wires the DICOM listener: AE settings, presentation contexts and event handlers."""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from typing import Any, cast

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.network.association_policy import handle_requested
from dicom_node.network.ingest import Ingestor
from dicom_node.network.process_locks import AssociationSlots
from dicom_node.network.releases import ReleasedStudies
from dicom_node.network.sop_classes import (
    ACCEPTED_STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    register_retired_storage_classes,
)
from dicom_node.network.spool import Spool
from dicom_node.network.storage_scp import handle_echo, handle_store
from dicom_node.network.tls import server_context
from dicom_node.settings import DicomSettings

log = logging.getLogger(__name__)


def configure_reception(spool: Spool) -> None:
    """Process-wide pynetdicom set-up for durable, low-memory reception.

    pynetdicom then writes each incoming data set straight to a temporary file
    (never whole in memory); putting temporary files in the spool's ``tmp/``
    makes the final placement a rename on the same file system.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool.layout.tmp)


def build_ae(settings: DicomSettings) -> AE:
    """An AE that accepts every storage SOP class (refusing non-ultrasound ones by status)."""
    register_retired_storage_classes()
    ae = AE(ae_title=settings.ae_title)
    # The limit is the association slots' (over all processes). pynetdicom's own count also
    # holds connections that never sent an A-ASSOCIATE-RQ (a port probe keeps its thread
    # for the ACSE timeout), so it is only a backstop.
    ae.maximum_associations = 2 * settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.require_called_aet = False  # checked by the association policy, which records it
    storage_classes = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    for sop_class in sorted(storage_classes | ACCEPTED_STORAGE_CLASSES):
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae


# Backlog of the listening socket: connections the kernel completes before a process accepts.
LISTEN_BACKLOG = 128
# A process serving k associations waits k times this before accepting another (sharing).
ACCEPT_DELAY_PER_ASSOCIATION_S = 0.01


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening (port 0 picks a free one).

    One socket serves every listener process: each accepts from its one queue.
    """
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except OSError:
        listening.close()
        raise
    return listening


class SharedSocketServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a given listening socket, possibly shared by processes.

    Every process that shares the socket wakes for a new connection; one that
    already serves associations waits ``accept_delay_s`` for each before it
    tries to accept, so the least busy process takes the connection and the
    others find the queue empty. The socket is closed on shutdown, never shut
    down: the other processes go on listening on it.
    """

    def __init__(
        self, *args: Any, listening: socket.socket, accept_delay_s: float, **kwargs: Any
    ) -> None:
        self._listening = listening
        self._accept_delay_s = accept_delay_s
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Serve on the given socket instead of binding a new one."""
        cast(socket.socket, self.socket).close()
        self.socket = self._listening
        self.socket.setblocking(False)  # a process that loses the race is not blocked
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing: the owner of the socket has made it listen."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept after waiting in proportion to the associations being served."""
        if self._accept_delay_s:  # counting the associations is for sharing only
            time.sleep(len(self.active_associations) * self._accept_delay_s)
        return super().get_request()

    def server_close(self) -> None:
        """Close this process's descriptor of the socket."""
        cast(socket.socket, self.socket).close()


class DicomListener:
    """The running C-STORE/C-ECHO SCP; ``released`` learns which studies each association stored.

    ``slots`` holds the association limit over every listener process;
    ``listening`` is the listening socket, ``shared`` when other processes
    accept from it too.
    """

    def __init__(
        self,
        settings: DicomSettings,
        ingestor: Ingestor,
        released: ReleasedStudies,
        slots: AssociationSlots,
        *,
        listening: socket.socket,
        shared: bool,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._released = released
        self._slots = slots
        self._listening = listening
        self._shared = shared
        self._server: Any = None

    def start(self) -> None:
        """Serve the listening socket in background threads."""
        ae = build_ae(self._settings)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, handle_requested, [self._settings, self._ingestor, self._slots]),
            (evt.EVT_C_STORE, handle_store, [self._ingestor, self._released]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_RELEASED, self._released.handle_released),
            (evt.EVT_ABORTED, self._released.handle_aborted),
            # the slot is free before the requestor learns the association ended
            (evt.EVT_RELEASED, self._free_slot),
            (evt.EVT_ABORTED, self._free_slot),
            (evt.EVT_CONN_CLOSE, self._after_connection),
        ]
        ssl_context = server_context(self._settings.tls) if self._settings.tls.enabled else None
        self._server = ae.make_server(
            (self._settings.host, self._settings.port),
            evt_handlers=handlers,
            ssl_context=ssl_context,
            server_class=SharedSocketServer,
            listening=self._listening,
            accept_delay_s=ACCEPT_DELAY_PER_ASSOCIATION_S if self._shared else 0.0,
        )
        ae._servers.append(self._server)  # as AE.start_server does; shutdown removes it
        threading.Thread(
            target=self._server.serve_forever, name="llnm-acceptor", daemon=True
        ).start()
        log.info(
            "listening as %s on %s:%d%s",
            self._settings.ae_title,
            self._settings.host,
            self.port,
            " (TLS)" if ssl_context else "",
        )

    def _free_slot(self, event: Any) -> None:
        """EVT_RELEASED, EVT_ABORTED: the association's slot is free."""
        self._slots.give_back(event.assoc)

    def _after_connection(self, event: Any) -> None:
        """EVT_CONN_CLOSE: free the slot (if still held), then sweep abandoned partial files.

        A reception idle for longer than the network plus DIMSE timeouts has been
        aborted by pynetdicom; twice that is the margin.
        """
        self._slots.give_back(event.assoc)
        idle_s = 2 * (self._settings.network_timeout_s + self._settings.dimse_timeout_s)
        self._ingestor.sweep_abandoned(idle_s=idle_s)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting associations and close the open ones."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self._slots.close()
            self._ingestor.close()
