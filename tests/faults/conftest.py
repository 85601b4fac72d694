"""Fault tests: real workers, reconcilers and job processes against a Redis and a
PostgreSQL of the test session's own (started here on free ports, so that a test may
kill, stop, flush and restart them without touching the shared services).

Each test records its outcome (the fault, what happened, how long recovery took) with
the ``reliability`` fixture: one JSON file per test under ``$REGBENCH_RELIABILITY_OUT``
(default: the session's pytest tmp dir), from which the README's reliability table is
built.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

import pytest
import redis
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, text

from tests.worker.conftest import Backend, _make_backend

POSTGRES_USER = "postgres"  # initdb and postgres refuse to run as root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(port: int, is_open: bool, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port) != is_open:
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not {'open' if is_open else 'close'} port {port}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _quiet_kombu() -> None:
    # kombu's SQLAlchemy transport uses a loader SQLAlchemy 2.1 deprecates; not ours.
    warnings.filterwarnings("ignore", message=".*noload.*", category=DeprecationWarning)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One local MLflow store for the session; each test has an MLflow experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the schema now, once
    return uri


# --------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """A redis-server without persistence: killed and restarted, it comes back empty."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_port(self.port, True, 15, "redis-server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def queue_length(self, queue: str) -> int:
        with redis.Redis.from_url(self.url) as client:
            return int(client.llen(queue))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's own Redis, running and empty for each test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.flush()
    yield redis_server
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        pytest.fail(f"PostgreSQL's {name} is not installed (/usr/lib/postgresql/*/bin)")
    return path


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", POSTGRES_USER, "--", *argv]


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, stopped and started at will."""

    port: int
    datadir: Path
    socket_dir: Path
    log: Path
    databases: list[str] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        argv = _as_postgres([_postgres_bin("pg_ctl"), "-D", str(self.datadir), *args])
        done = subprocess.run(argv, capture_output=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"pg_ctl {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        """Immediate shutdown: every connection drops, as when the server goes away."""
        self._pg_ctl("stop", "-w", "-m", "immediate")

    @property
    def running(self) -> bool:
        return port_open(self.port)

    def create_database(self) -> str:
        name = f"regbench_fault_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="regbench-faults-pg-"))
    server = PostgresServer(free_port(), root / "data", root, root / "postgres.log")
    if os.geteuid() == 0:
        shutil.chown(root, POSTGRES_USER)
    argv = [_postgres_bin("initdb"), "-D", str(server.datadir), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync"]  # fmt: skip
    done = subprocess.run(_as_postgres(argv), capture_output=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stderr.decode()[-2000:]}")
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's own PostgreSQL, running at the start and the end of each test."""
    if not postgres_server.running:
        postgres_server.start()
    yield postgres_server
    if not postgres_server.running:
        postgres_server.start()


@pytest.fixture
def faulty_cluster(
    tmp_path: Path, mlflow_uri: str, own_postgres: PostgresServer, own_redis: RedisServer
) -> Iterator[Backend]:
    """The cluster configuration on this session's own PostgreSQL and Redis."""
    database_url = own_postgres.create_database()
    yield from _make_backend("cluster", tmp_path, mlflow_uri, database_url, own_redis.url)


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """One fault test's line in the reliability table."""

    test: str
    fault: str = ""
    outcome: str = ""
    recover_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def record(self, fault: str, outcome: str, recover_s: float | None, **details: Any) -> None:
        self.fault, self.outcome, self.details = fault, outcome, details
        self.recover_s = None if recover_s is None else round(recover_s, 1)


@pytest.fixture(scope="session")
def reliability_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("REGBENCH_RELIABILITY_OUT")
    path = Path(configured) if configured else tmp_path_factory.mktemp("reliability")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def reliability(request: pytest.FixtureRequest, reliability_dir: Path) -> Iterator[Outcome]:
    """Fill in with ``.record(fault, outcome, recover_s)``; written when the test passes."""
    outcome = Outcome(request.node.nodeid)
    yield outcome
    report = getattr(request.node, "rep_call", None)
    if outcome.fault and report is not None and report.passed:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        path = reliability_dir / f"{name}.json"
        path.write_text(json.dumps(outcome.__dict__, indent=2, default=str) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- assertions


def assert_one_run_every_epoch_once(backend: Backend, experiment_ids: list[str]) -> None:
    """Each experiment has exactly one MLflow run (its train job's), in which every epoch's
    metrics appear once and every other metric (the final ones) once per step."""
    client = backend.mlflow()
    mlflow_experiment = client.get_experiment_by_name(backend.settings.mlflow_experiment)
    assert mlflow_experiment is not None, "no MLflow experiment: nothing was logged"
    runs = client.search_runs([mlflow_experiment.experiment_id], max_results=1000)
    by_experiment: dict[str, list[str]] = {}
    for run in runs:
        owner = run.data.tags.get("regbench.experiment_id", "")
        by_experiment.setdefault(owner, []).append(run.info.run_id)
    for experiment_id in experiment_ids:
        train = backend.train(experiment_id)
        assert by_experiment.get(experiment_id) == [train.mlflow_run_id], (
            f"experiment {experiment_id}: runs {by_experiment.get(experiment_id)}, "
            f"train job's {train.mlflow_run_id}"
        )
        epochs = backend.experiment(experiment_id)["metrics"].get("epochs")
        run = client.get_run(train.mlflow_run_id)
        assert run.info.status == "FINISHED", run.info.status
        for key in run.data.metrics:
            steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(1, int(epochs) + 1)), f"train/loss epochs {steps}"


def assert_one_run_epochs_once(backend: Backend, experiment_id: str, status: str) -> list[int]:
    """The experiment has exactly one MLflow run (its train job's), ended ``status``, with
    no metric logged twice at a step and the epochs it trained (1, 2, ...) each once; for
    a job that failed or stopped before its last epoch. Returns those epochs."""
    client = backend.mlflow()
    mlflow_experiment = client.get_experiment_by_name(backend.settings.mlflow_experiment)
    assert mlflow_experiment is not None, "no MLflow experiment: nothing was logged"
    train = backend.train(experiment_id)
    runs = [
        run.info.run_id
        for run in client.search_runs([mlflow_experiment.experiment_id], max_results=1000)
        if run.data.tags.get("regbench.experiment_id") == experiment_id
    ]
    assert runs == [train.mlflow_run_id], f"runs {runs}, train job's {train.mlflow_run_id}"
    # A child stopped by its supervisor (SIGKILLed past the grace) leaves its run to the
    # supervisor, which closes it just after it records the job's state.
    run = backend.wait(
        lambda: (found := client.get_run(train.mlflow_run_id)).info.status != "RUNNING" and found,
        30,
        f"MLflow run {train.mlflow_run_id} to end",
    )
    assert run.info.status == status, run.info.status
    for key in run.data.metrics:
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert epochs == list(range(1, len(epochs) + 1)), f"train/loss epochs {epochs}"
    return epochs
