"""Blocking byte-range locks (``fcntl.lockf``) held by a process, for locks between processes.

The kernel drops a process's locks when it dies, so a process killed with
SIGKILL holds nothing afterwards. Its deadlock detection works per process,
not per thread: a thread waiting for a lock held by another process, while a
different thread of its own holds a lock that process waits for, is told
EDEADLK although no thread waits for itself. Callers here take locks in one
order (an instance's stripe, then the database's writer turn), so such an
answer is always a false alarm and the lock is asked for again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

_RETRY_S = 0.0005


def open_lock_file(path: Path) -> int:
    """Open (creating it and its folder) a lock file; returns the descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def lock(fd: int, *, start: int = 0, length: int = 1) -> None:
    """Wait for an exclusive lock on ``length`` bytes of ``fd`` from ``start``."""
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, length, start)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                raise
        time.sleep(_RETRY_S)


def try_lock(fd: int, *, start: int = 0, length: int = 1) -> bool:
    """Take the lock if it is free; False if another process holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def unlock(fd: int, *, start: int = 0, length: int = 1) -> None:
    """Release the lock on ``length`` bytes of ``fd`` from ``start``."""
    fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
