"""`regbench users`: add (a token printed once, only its hash stored), list, token,
remove; the start-up line saying who may do what. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from client import cli
from service import users
from service.db import Database
from service.schema import upgrade_database
from service.serve import auth_line
from service.settings import Settings
from service.tables import User


def regbench(database_url: str, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(cli.main, list(args), env={"REGBENCH_DATABASE_URL": database_url})


@pytest.fixture
def job_store(database_url: str) -> str:
    upgrade_database(database_url)
    return database_url


def stored_rows(database_url: str) -> list[tuple[object, ...]]:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text("SELECT * FROM users"))]
    finally:
        database.dispose()


def test_users_add_prints_a_token_once_and_stores_only_its_hash(job_store: str) -> None:
    added = regbench(job_store, "users", "add", "ann")
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("rb_") and len(token) >= 40 and "\n" not in token
    assert "shown once" in added.stderr
    admin = regbench(job_store, "users", "add", "root", "--admin")
    root_token = admin.stdout.strip()
    assert admin.exit_code == 0 and root_token != token
    rows = stored_rows(job_store)
    assert len(rows) == 2
    for row in rows:  # no column of any row holds a token
        assert not any(t in str(value) for value in row for t in (token, root_token))
    database = Database(job_store)
    try:
        with database.session() as session:
            ann = session.scalar(select(User).where(User.name == "ann"))
            assert ann is not None and not ann.admin
            assert ann.token_hash == hashlib.sha256(token.encode()).hexdigest()
            assert users.find_user(session, token) == ann
            found = users.find_user(session, root_token)
            assert found is not None and found.name == "root" and found.admin
            assert users.find_user(session, token + "x") is None
    finally:
        database.dispose()


def test_users_list_token_remove(job_store: str) -> None:
    empty = regbench(job_store, "users", "list")
    assert empty.exit_code == 0 and "no users" in empty.stdout
    first = regbench(job_store, "users", "add", "ann").stdout.strip()
    regbench(job_store, "users", "add", "root", "--admin")
    listed = regbench(job_store, "users", "list")
    assert listed.exit_code == 0
    lines = [line.split("\t")[:2] for line in listed.stdout.splitlines()]
    assert lines == [["ann", "user"], ["root", "admin"]]
    assert first not in listed.output
    again = regbench(job_store, "users", "add", "ann")
    assert again.exit_code != 0 and "exists" in again.output
    renewed = regbench(job_store, "users", "token", "ann")
    assert renewed.exit_code == 0
    second = renewed.stdout.strip()
    database = Database(job_store)
    try:
        with database.session() as session:
            assert users.find_user(session, first) is None
            found = users.find_user(session, second)
            assert found is not None and found.name == "ann"
    finally:
        database.dispose()
    assert regbench(job_store, "users", "remove", "ann").exit_code == 0
    gone = regbench(job_store, "users", "remove", "ann")
    assert gone.exit_code != 0 and "no user 'ann'" in gone.output
    assert [row[0] for row in stored_rows(job_store)] == ["root"]


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "ann\n", "x" * 101, "é"])
def test_users_add_refuses_bad_names(sqlite_url: str, name: str) -> None:
    upgrade_database(sqlite_url)
    refused = regbench(sqlite_url, "users", "add", "--", name)
    assert refused.exit_code != 0 and "invalid user name" in refused.output
    assert stored_rows(sqlite_url) == []


def test_users_commands_need_the_newest_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url, "0004")
    refused = regbench(url, "users", "add", "ann")
    assert refused.exit_code != 0 and "regbench db upgrade" in refused.output


def test_the_start_up_line_says_who_may_do_what(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None)
    upgrade_database(settings.job_store_url)
    line = auth_line(settings)
    assert "no users" in line and "local user 'local'" in line and "no token" in line
    database = Database(settings.job_store_url)
    try:
        with database.session() as session:
            users.add_user(session, "ann")
            session.commit()
    finally:
        database.dispose()
    assert auth_line(settings) == (
        "auth: users: 1 user(s); writes need a token, reads are open (REGBENCH_AUTH_READS)"
    )
    assert "reads too" in auth_line(settings.model_copy(update={"auth_reads": True}))


def test_regbench_serve_runs_as_the_local_user_and_says_so(tmp_path: Path) -> None:
    """The embedded stack, as `make demo` starts it: no token set up anywhere."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
    env["REGBENCH_DEFAULT_QUEUE"] = f"test-{uuid.uuid4().hex[:12]}"  # no worker takes it
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "client.cli", "serve", "--no-mlflow-ui",
             "--data-dir", str(tmp_path / "data"), "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while "ready; Ctrl-C" not in log.read_text():
                assert serve.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            spec = {"name": "x", "dataset": {"name": "digits", "size": 8},
                    "model": {"name": "mlp", "hidden": [4]}, "training": {"epochs": 1}}  # fmt: skip
            created = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/experiments", json=spec, timeout=120
            )
            assert created.status_code == 201 and created.json()["owner"] == "local"
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
    text = log.read_text()
    assert "auth: no users, so no tokens: every request runs as the local user 'local'" in text


def test_an_empty_shared_token_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose passes REGBENCH_API_TOKEN="" when API_TOKEN is unset."""
    monkeypatch.setenv("REGBENCH_API_TOKEN", "")
    assert Settings().api_token is None
    monkeypatch.setenv("REGBENCH_API_TOKEN", "t")
    token = Settings().api_token
    assert token is not None and token.get_secret_value() == "t"
