"""The job store's transactions on SQLite and PostgreSQL: a savepoint is part of the
transaction around it (released, it commits nothing on its own; rolled back, it undoes
only its own rows), and the SQLite engine keeps its pragmas."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from service.db import Database
from service.tables import Base, Sweep


def sweep(name: str) -> Sweep:
    return Sweep(name=name, sweep_hash=name, base={}, grid={}, size=0)


def names(db: Database) -> list[str]:
    """The sweeps another connection sees (what is committed)."""
    with db.session() as session:
        return sorted(session.scalars(select(Sweep.name)))


def test_a_released_savepoint_commits_nothing_until_the_transaction_does(
    database: Database,
) -> None:
    """The savepoint is the transaction's first statement (as in a sweep's submission):
    on SQLite it used to become the transaction itself, committed by its RELEASE."""
    with database.session() as session:
        with session.begin_nested():
            session.add(sweep("in the savepoint"))
        assert names(database) == []  # released, not committed: no one else sees it
        session.add(sweep("after it"))
        session.flush()
        session.rollback()
    assert names(database) == []


def test_a_rolled_back_savepoint_undoes_only_its_own_rows(database: Database) -> None:
    with database.session() as session:
        with session.begin_nested():
            session.add(sweep("kept"))
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(sweep("undone"))
            session.flush()
            session.add(sweep("kept"))  # the same sweep_hash: the savepoint fails
            session.flush()
        session.add(sweep("also kept"))
        session.commit()
    assert names(database) == ["also kept", "kept"]


def test_a_savepoint_rolled_back_first_leaves_the_transaction_usable(
    database: Database,
) -> None:
    with database.session() as session:
        savepoint = session.begin_nested()
        session.add(sweep("undone"))
        session.flush()
        savepoint.rollback()
        assert session.scalar(select(func.count()).select_from(Sweep)) == 0
        session.add(sweep("kept"))
        session.commit()
    assert names(database) == ["kept"]


def test_concurrent_savepoints_on_one_file_each_commit_with_their_transaction(
    sqlite_url: str,
) -> None:
    """Two sessions, each opening its transaction with a savepoint: the second waits for
    the first's lock (the busy timeout), no 'database is locked'; both commit."""
    db = Database(sqlite_url)
    Base.metadata.create_all(db.engine)
    first_wrote, release_first = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with db.session() as session:
                with session.begin_nested():
                    session.add(sweep("first"))
                first_wrote.set()
                release_first.wait(timeout=10)
                session.commit()
        except BaseException as exc:
            errors.append(exc)
            first_wrote.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_wrote.wait(timeout=10)
        assert names(db) == []  # the first one's savepoint is released, not committed
        threading.Timer(0.5, release_first.set).start()
        with db.session() as session:
            session.scalar(select(func.count()).select_from(Sweep))  # a read first
            with session.begin_nested():
                session.add(sweep("second"))  # waits for the first transaction's lock
            session.commit()
    finally:
        release_first.set()
        thread.join(timeout=20)
        db.dispose()
    assert not errors, errors
    db = Database(sqlite_url)
    try:
        assert names(db) == ["first", "second"]
    finally:
        db.dispose()


def test_sqlite_keeps_wal_foreign_keys_and_the_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        with db.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    finally:
        db.dispose()
