"""One listener child process (``python -m dicom_node.app.listener_process WAKE_FD SOCKET_FD``).

Protocol with the parent (``app/listeners.py``): a ``ListenerSpec`` as one JSON
line on stdin; ``prepared`` on stdout once it could serve; ``listen`` from the
parent; ``ready`` once it accepts on the inherited listening socket; stop when
stdin closes or on SIGTERM. SIGINT is left to the parent, which stops its
children in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from db.session import Database
from dicom_node.app.listeners import LISTEN, PREPARED, READY, ListenerSpec, open_listener
from dicom_node.network.listener import configure_reception
from dicom_node.network.spool import Spool
from imaging.dicom_files import keep_header_values_out_of_logs


def _wake_pipe(fd: int) -> Callable[[], None]:
    """Wakes the parent's completion watcher through the pipe ``fd``."""

    def wake() -> None:
        with contextlib.suppress(OSError):  # the parent is gone or the pipe is full
            os.write(fd, b"w")

    return wake


def _stop_at_end_of_input(stop: threading.Event) -> None:
    sys.stdin.read()  # returns when the parent closes the pipe or dies
    stop.set()


def main(argv: list[str]) -> int:
    """Listen until stdin closes or SIGTERM; returns the exit code."""
    wake_fd = int(argv[0])
    listening = socket.socket(fileno=int(argv[1]))
    os.set_blocking(wake_fd, False)  # a full pipe already wakes the watcher
    spec = ListenerSpec.from_json(sys.stdin.readline())
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)-7s [listener {os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if spec.log_level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    keep_header_values_out_of_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    database = Database(spec.database_url, durable=spec.durable)
    spool = Spool(Path(spec.spool_root), durable=spec.durable)
    configure_reception(spool)
    listener = open_listener(
        spec,
        database=database,
        spool=spool,
        wake=_wake_pipe(wake_fd),
        listening=listening,
        shared=True,
    )
    print(PREPARED, flush=True)
    if sys.stdin.readline().strip() == LISTEN:  # else the parent stopped before
        listener.start()
        print(READY, flush=True)
        threading.Thread(target=_stop_at_end_of_input, args=(stop,), daemon=True).start()
        stop.wait()
    listener.stop()
    database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
