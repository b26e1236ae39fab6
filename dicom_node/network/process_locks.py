"""Locks shared by every listener process: byte-range locks on two files in the spool.

A lock is one byte of a file (:mod:`db.file_locks`); the kernel drops a
process's locks when it dies, so a listener killed with SIGKILL holds nothing
afterwards. Such locks belong to the process, not the thread: threads of one
process are kept apart by a thread lock beside each byte.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from db import file_locks


class AssociationSlots:
    """At most ``limit`` open associations over all processes: one locked byte per slot."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fd = file_locks.open_lock_file(path)
        self._limit = limit
        self._lock = threading.Lock()
        self._held: dict[Any, int] = {}  # association -> slot

    def take(self, owner: Any) -> bool:
        """Give ``owner`` a free slot; False when all are taken."""
        with self._lock:
            busy = set(self._held.values())
            for slot in range(self._limit):
                if slot in busy:
                    continue
                if not file_locks.try_lock(self._fd, start=slot):  # held by another process
                    continue
                self._held[owner] = slot
                return True
            return False

    def give_back(self, owner: Any) -> None:
        """Free ``owner``'s slot, if it holds one."""
        with self._lock:
            slot = self._held.pop(owner, None)
            if slot is not None:
                file_locks.unlock(self._fd, start=slot)

    def close(self) -> None:
        """Close the file, freeing every slot this process holds."""
        with self._lock:
            self._held.clear()
            os.close(self._fd)


class StripeLocks:
    """Mutual exclusion per key (a SOP Instance UID) across threads and processes.

    Keys map to ``stripes`` bytes by CRC-32, which, unlike ``hash``, is the same
    in every process.
    """

    def __init__(self, path: Path, stripes: int = 64) -> None:
        self._fd = file_locks.open_lock_file(path)
        self._threads = tuple(threading.Lock() for _ in range(stripes))

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s stripe in this thread and process."""
        stripe = zlib.crc32(key.encode()) % len(self._threads)
        with self._threads[stripe]:
            file_locks.lock(self._fd, start=stripe)
            try:
                yield
            finally:
                file_locks.unlock(self._fd, start=stripe)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
