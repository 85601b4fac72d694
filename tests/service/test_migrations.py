"""Alembic on PostgreSQL and SQLite: up, down, up; the start-up schema check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from service.db import make_engine
from service.schema import (
    SchemaOutdatedError,
    assert_schema_current,
    current_revision,
    downgrade_database,
    head_revision,
    upgrade_database,
)
from service.tables import Base

TABLES = {
    "sweeps",
    "sweep_experiments",
    "experiments",
    "jobs",
    "workers",
    "users",
    "predictions",
}


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = make_engine(database_url)
    with pytest.raises(SchemaOutdatedError, match="regbench db upgrade"):
        assert_schema_current(engine)
    upgrade_database(database_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert current_revision(engine) == head_revision()
    assert_schema_current(engine)
    downgrade_database(database_url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    assert current_revision(engine) is None
    upgrade_database(database_url)
    assert_schema_current(engine)
    engine.dispose()


def test_sweeps_recorded_before_0002_get_a_size_and_no_report(database_url: str) -> None:
    upgrade_database(database_url, "0001")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sweeps (id, name, owner, sweep_hash, base, grid, created_at) "
                "VALUES ('s1', 'old', 'anonymous', 'h', '{}', '{}', CURRENT_TIMESTAMP)"
            )
        )
    upgrade_database(database_url)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT size, report_status FROM sweeps")).one()
    engine.dispose()
    assert tuple(row) == (0, "none")


def test_0005_makes_sweeps_unique_per_owner(database_url: str) -> None:
    """Sweeps recorded before keep their rows; the same hash may then exist once per
    owner, never twice for one owner."""
    upgrade_database(database_url, "0004")
    engine = make_engine(database_url)
    insert = (
        "INSERT INTO sweeps (id, name, owner, sweep_hash, base, grid, size, report_status, "
        "created_at) VALUES (:id, 'old', :owner, 'h', '{}', '{}', 0, 'none', CURRENT_TIMESTAMP)"
    )
    with engine.begin() as connection:
        connection.execute(text(insert), {"id": "s1", "owner": "anonymous"})
    upgrade_database(database_url)
    with engine.begin() as connection:
        connection.execute(text(insert), {"id": "s2", "owner": "ann"})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(insert), {"id": "s3", "owner": "ann"})
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, owner FROM sweeps ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [("s1", "anonymous"), ("s2", "ann")]
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM sweeps WHERE id = 's2'"))
    downgrade_database(database_url, "0004")  # back to one sweep per hash
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(insert), {"id": "s4", "owner": "bob"})
    engine.dispose()


def test_0006_adds_predictions_beside_the_experiments_recorded_before(database_url: str) -> None:
    """Old experiments keep their rows and have no predictions; a new one may store them,
    as bytes that come back unchanged; downgrading drops only the table."""
    upgrade_database(database_url, "0005")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (id, name, owner, spec, spec_hash, dedup_key, "
                "created_at) VALUES ('e1', 'old', 'anonymous', '{}', 'h', 'h', "
                "CURRENT_TIMESTAMP)"
            )
        )
    upgrade_database(database_url)
    labels = bytes([0, 9, 3, 255])
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 0
        connection.execute(
            text(
                "INSERT INTO predictions (experiment_id, split, labels, dtype, n, "
                "labels_checksum, created_at) VALUES ('e1', 'test', :labels, '|u1', 4, 'c', "
                "CURRENT_TIMESTAMP)"
            ),
            {"labels": labels},
        )
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT labels, n FROM predictions")).one()
        assert (bytes(stored[0]), stored[1]) == (labels, 4)
    downgrade_database(database_url, "0005")
    assert "predictions" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM experiments")).scalars().all() == ["e1"]
    engine.dispose()


def test_migrations_match_the_tables(database_url: str) -> None:
    """A change to service/tables.py without a migration fails here."""
    upgrade_database(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_regbench_db_commands(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REGBENCH_DATABASE_URL": postgres_url}
    for args in (["upgrade"], ["current"], ["downgrade", "base"], ["upgrade"]):
        done = subprocess.run(
            [sys.executable, "-m", "client.cli", "db", *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert f"current: {head_revision()}" in subprocess.run(
        [sys.executable, "-m", "client.cli", "db", "current"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
