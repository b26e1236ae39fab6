"""Early writeback of data sets while they are being received.

pynetdicom writes each received C-STORE data set to a temporary file, one
P-DATA PDU at a time. Asking the kernel to start writing those pages to disk
as they arrive (Linux ``sync_file_range``, which does not wait) means that the
fsync before the C-STORE response only has the last PDU left to write: on the
development disk 0.3 ms instead of 1.4 ms per 0.9 MB instance. Durability does
not depend on this; the fsync still runs before every response.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from typing import Any

# SYNC_FILE_RANGE_WRITE from <fcntl.h>: start writeback of dirty pages, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int], None] | None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` where the C library has it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start(fd: int) -> None:
        function(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # failure only loses the head start

    return start


_start = _load_sync_file_range()
AVAILABLE = _start is not None


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (no-op where unsupported)."""
    if _start is not None:
        _start(fd)


def receiving_file(assoc: Any) -> Any | None:
    """The temporary file an association is writing its current C-STORE data set to.

    pynetdicom (3.x, ``STORE_RECV_CHUNKED_DATASET``) keeps it on the DIMSE
    message being assembled; None between messages and for other messages.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    data_set_file = getattr(message, "_data_set_file", None)
    if data_set_file is None or data_set_file.closed:
        return None
    return data_set_file


def handle_pdu_received(event: Any) -> None:
    """EVT_PDU_RECV handler: start writeback of what the previous PDUs wrote."""
    data_set_file = receiving_file(event.assoc)
    if data_set_file is not None:
        start_writeback(data_set_file.fileno())
