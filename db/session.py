"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from db import file_locks

# A writer waits this long for SQLite's lock before the statement fails.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _configure_sqlite(engine: Engine, *, durable: bool) -> None:
    """Durable, concurrent SQLite: WAL, fsync on commit, write lock taken at BEGIN.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's
    BEGIN (made IMMEDIATE) and SAVEPOINTs work as documented. Not ``durable``:
    ``synchronous = OFF`` (no fsync at all) instead of ``FULL``.
    """
    synchronous = "FULL" if durable else "OFF"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # straight to the driver: once per transaction, on the listener's hot path
        connection.connection.dbapi_connection.execute("BEGIN IMMEDIATE")


class WriterTurn:
    """Whose turn it is to write an SQLite file: one thread of one process at a time.

    A thread lock queues this process's threads; a lock on ``path`` (``fcntl``,
    dropped by the kernel when a process dies) queues the processes. A waiting
    writer then wakes the moment the lock is free, instead of SQLite's busy
    handler sleeping 1 to 100 ms between tries. Re-entrant within a thread.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None  # opened at first use: the folder may not exist yet

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._depth == 0 and self._path is not None:
                if self._fd is None:
                    self._fd = file_locks.open_lock_file(self._path)
                file_locks.lock(self._fd)
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            file_locks.unlock(self._fd)
        self._threads.release()

    def close(self) -> None:
        """Close the lock file (it is opened again if the turn is taken again)."""
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _sqlite_file(engine: Engine) -> Path | None:
    """The database file of an SQLite engine; None for an in-memory database."""
    name = engine.url.database
    return None if not name or name == ":memory:" or name.startswith("file:") else Path(name)


class Database:
    """An engine plus a session factory; one per process and URL.

    Parameters
    ----------
    url
        SQLAlchemy URL of a SQLite file or a PostgreSQL database.
    echo
        Log every statement.
    durable
        False commits without waiting for the disk: SQLite ``synchronous =
        OFF``, PostgreSQL ``synchronous_commit = off``. It exists only so that
        the ingest benchmark can price durability; it is never a node setting.
    """

    def __init__(self, url: str, *, echo: bool = False, durable: bool = True) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine = create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": 10}
            )
            _configure_sqlite(self.engine, durable=durable)
        else:
            options = {} if durable else {"options": "-c synchronous_commit=off"}
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, connect_args=options)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time and every transaction here writes (BEGIN
        # IMMEDIATE). Queueing transactions on a lock, across this process's threads and
        # the node's processes, keeps them from colliding in SQLite, whose busy handler
        # backs off by sleeping up to 100 ms.
        self._turn: AbstractContextManager[object] = nullcontext()
        if url.startswith("sqlite"):
            database_file = _sqlite_file(self.engine)
            self._turn = WriterTurn(
                None
                if database_file is None
                else database_file.with_name(database_file.name + ".writer-lock")
            )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._turn, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A bare connection in a transaction, for Core-only hot paths (no ORM session)."""
        with self._turn, self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection (and the writer lock file)."""
        self.engine.dispose()
        if isinstance(self._turn, WriterTurn):
            self._turn.close()
