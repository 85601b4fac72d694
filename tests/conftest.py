"""Shared fixtures. Tests run on the CPU with a fixed thread count so results repeat.

Service tests talk to the real PostgreSQL and Redis on 127.0.0.1 and to the embedded
SQLite default. A service that is down is started if this machine can; otherwise the
test fails with a message saying what to start (never a silent skip)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from service.db import Database
from service.tables import Base
from tests import reliability

POSTGRES_ADMIN_URL = os.environ.get(
    "REGBENCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _ensure_service(name: str, port: int, start: list[str]) -> None:
    if _port_open("127.0.0.1", port):
        return
    if shutil.which(start[0]):
        subprocess.run(start, check=False, capture_output=True, timeout=60)
        for _ in range(50):
            if _port_open("127.0.0.1", port):
                return
            time.sleep(0.2)
    pytest.fail(
        f"{name} is not reachable on 127.0.0.1:{port} and could not be started with "
        f"`{' '.join(start)}`; start it before running the service tests"
    )


def ensure_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    version = versions[-1] if versions else "15"
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"]
    _ensure_service("PostgreSQL", 5432, command)


def ensure_redis() -> None:
    command = [
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    _ensure_service("Redis", REDIS_PORT, command)


@contextmanager
def fresh_postgres_database(prefix: str = "regbench_test") -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards."""
    ensure_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each job-store test runs on the embedded default and on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    Base.metadata.create_all(db.engine)
    try:
        yield db
    finally:
        db.dispose()


torch.set_num_threads(1)


# --------------------------------------------------------------------------- reliability
# The README's reliability section is rebuilt at the end of a run that included every
# fault test, the fuzz test and the load test, with every fault test passing and every
# record written (``make test``); any other run leaves the README as it is.

README = Path(__file__).resolve().parents[1] / "README.md"
FAULTS = Path(__file__).resolve().parent / "faults"
# The test files whose records the section needs besides the fault tests': kind, stores.
RECORDED_BY = {
    "tests/api/test_fuzz.py": ("inputs", ("embedded", "cluster")),
    "tests/api/test_load.py": ("load", ("embedded", "cluster")),
}
_PASSED: dict[str, bool] = {}  # node id -> setup, call and teardown all passed
_DESELECTED: list[str] = []  # by -k, -m, --lf...: not a full run


def pytest_configure(config: pytest.Config) -> None:
    """One records directory for the run: ``$REGBENCH_RELIABILITY_OUT`` emptied of an
    earlier run's records, or a fresh temporary one (the fixtures read the variable)."""
    configured = os.environ.get(reliability.ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.json"):
            old.unlink()
    else:
        os.environ[reliability.ENV] = tempfile.mkdtemp(prefix="regbench-reliability-")


@pytest.fixture(scope="session")
def reliability_out() -> Path:
    """Where tests outside tests/faults write their records (``tests/reliability.py``)."""
    return Path(os.environ[reliability.ENV])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _PASSED[report.nodeid] = _PASSED.get(report.nodeid, True) and report.passed


def pytest_deselected(items: list[pytest.Item]) -> None:
    _DESELECTED.extend(item.nodeid for item in items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    items = getattr(session, "items", [])
    faults = {
        item.nodeid: _PASSED.get(item.nodeid, False)
        for item in items
        if FAULTS in Path(str(item.path)).parents
    }
    files = {Path(os.path.relpath(item.path, README.parent)).as_posix() for item in items}
    blocked = reliability.blockers(faults, files, RECORDED_BY, not _DESELECTED)
    if blocked is None:
        return  # a run of part of the suite: the README stays as it is
    recording = [
        item.nodeid
        for item in items
        if item.nodeid in faults and "reliability" in item.fixturenames
    ]
    absent = blocked or reliability.update_readme(
        README, Path(os.environ[reliability.ENV]), recording, dict(RECORDED_BY.values())
    )
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        why = f" (missing: {', '.join(absent)})" if absent else ""
        reporter.write_line(f"README.md reliability section {'not ' if absent else ''}rebuilt{why}")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The data root holding real MNIST (torchvision layout, ``MNIST/raw``):
    ``$REGBENCH_DATA_ROOT``, else ``../shared/datasets`` beside the repository. Never
    downloaded: where it is absent a test skips with the reason, and fails under CI=true
    (where the data must be there)."""
    repository = Path(__file__).resolve().parents[1]
    root = Path(os.environ.get("REGBENCH_DATA_ROOT", repository.parent / "shared" / "datasets"))
    if not (root / "MNIST" / "raw").is_dir():
        reason = f"real MNIST not found under {root}/MNIST/raw: set REGBENCH_DATA_ROOT"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return root
