"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

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
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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
        # IMMEDIATE). Queueing this process's transactions on a lock keeps threads from
        # colliding in SQLite, whose busy handler backs off by sleeping up to 100 ms.
        self._turn: AbstractContextManager[object] = (
            threading.RLock() if url.startswith("sqlite") else nullcontext()
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
        """Close every pooled connection."""
        self.engine.dispose()
