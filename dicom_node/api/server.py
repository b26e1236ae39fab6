"""Serve the admin API with uvicorn in a daemon thread of the node (HTTPS with ``api.tls``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No signal handlers: the node's main thread owns SIGTERM and SIGINT."""
        yield


class ApiServer:
    """The API on ``host``:``port`` (0: a free port), started and stopped with the node."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        """``cert_file`` and ``key_file`` (PEM) serve HTTPS."""
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=None if cert_file is None else str(cert_file),
            ssl_keyfile=None if key_file is None else str(key_file),
            lifespan="off",
            access_log=False,  # request lines carry query strings: keep them out of the logs
            log_config=None,  # the node's logging configuration applies
            timeout_graceful_shutdown=5,
        )
        self._server = _ThreadServer(self._config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the API server is not started")
        return self._port

    def start(self) -> None:
        """Bind, serve in a daemon thread, and wait until it accepts connections.

        Raises
        ------
        OSError
            If the address cannot be bound.
        RuntimeError
            If the server does not start within ``START_TIMEOUT_S``.
        """
        host = self._config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, self._config.port), family=family)
        self._port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the admin API server did not start")
            time.sleep(0.01)
        log.info("admin API listening on %s:%d", host, self.port)

    def stop(self) -> None:
        """Stop accepting, let open requests finish (up to a few seconds), close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
