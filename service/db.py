"""The job store's engine and sessions, for SQLite (embedded) and PostgreSQL (cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # Several processes (API, worker, reconciler) share the file: wait on locks, use WAL.
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    event.listen(engine, "savepoint", _begin_before_savepoint)
    return engine


def _begin_before_savepoint(connection: Connection, _name: str | None) -> None:
    """Open the SQLite transaction before a SAVEPOINT that would otherwise open it.

    pysqlite sends BEGIN only before an INSERT, UPDATE or DELETE, so a savepoint taken
    before the transaction's first write (``session.begin_nested()``) ran outside any
    transaction: SQLite made the SAVEPOINT the transaction itself, and its RELEASE
    COMMITTED. A request's first savepoint was committed on its own, and a later
    failure or a killed process left half a request behind (a sweep without its
    experiments). With BEGIN sent here, every write of a transaction commits or rolls
    back with it, as on PostgreSQL.

    BEGIN IMMEDIATE: a savepoint is taken to write, so the write lock is taken now,
    waiting the busy timeout for another process's transaction. A deferred BEGIN would
    make the savepoint's first read (a lookup before the insert) pin a snapshot, and the
    insert after another process's commit fail at once with "database is locked". For
    the same reason SQLAlchemy's documented recipe (pysqlite's BEGIN turned off, BEGIN
    sent at the start of every transaction) is not used: every request that reads, then
    writes, would risk that error. Reads before the first write stay outside the
    transaction, as before.
    """
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory; ``with db.session() as s: ...; s.commit()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
