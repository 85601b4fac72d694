"""Worker tests run real processes: Celery workers, the reconciler, job children.

Two backends: ``embedded`` (SQLite job store, kombu's SQLAlchemy broker on SQLite: the
default configuration) and ``cluster`` (PostgreSQL and Redis on 127.0.0.1). Settings
reach the processes through ``REGBENCH_*`` variables, as in a deployment. Every process
a test starts is in its own process group and is killed when the test ends, with its
descendants (job children run in groups of their own).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from mlflow.tracking import MlflowClient

from regcore.spec import ExperimentSpec
from service import jobstore
from service.broker import enqueue, make_celery
from service.db import Database
from service.schema import upgrade_database
from service.settings import Settings
from service.tables import Experiment, Job
from tests.conftest import REDIS_HOST, REDIS_PORT, ensure_redis
from worker.runner import shutdown_slots

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_STALE_S = 3.0
RESERVED_REDIS_DBS = {0, 11}  # 0: people's own; 11: the API tests

T = TypeVar("T")

# Tiny and fast: digits at 8x8, a one-layer MLP, CPU.
FAST_SPEC: dict[str, Any] = {
    "name": "worker-test",
    "dataset": {"name": "digits", "size": 8, "train_size": 200, "test_size": 200},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 3, "batch_size": 50, "lr": 0.1, "seed": 0, "device": "cpu"},
}
# Epochs of a few hundred small steps: slow enough to catch a run mid-training.
SLOW_SPEC: dict[str, Any] = {
    "name": "worker-test-slow",
    "dataset": {"name": "digits", "size": 8, "train_size": 1000, "test_size": 200},
    "model": {"name": "mlp", "hidden": [32]},
    "training": {"epochs": 10, "batch_size": 4, "lr": 0.02, "seed": 3, "device": "cpu"},
}


def spec_with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with top-level keys replaced and ``training`` merged."""
    spec = {**base, **{k: v for k, v in changes.items() if k != "training"}}
    spec["training"] = {**base["training"], **changes.get("training", {})}
    return spec


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    every: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{details()}" if details is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{more}")
        time.sleep(every)


# --------------------------------------------------------------------------- processes


def process_table() -> dict[int, int]:
    """pid -> parent pid for every process (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    parents = process_table()
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, signum: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum) if group else os.kill(pid, signum)


@dataclass
class Processes:
    """Processes a test started, each in its own session; all killed at the end."""

    logdir: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        assert name not in self.started, f"{name} started twice"
        self.logdir.mkdir(parents=True, exist_ok=True)
        with (self.logdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 3000) -> str:
        """Every process's log tail, for failure messages."""
        return "\n".join(f"----- {name} -----\n{self.log(name)[-tail:]}" for name in self.started)

    def kill(self, name: str) -> list[int]:
        """SIGKILL a process's whole group at once (a crash); returns its descendants."""
        process = self.started[name]
        family = descendants(process.pid)
        _signal(process.pid, signal.SIGKILL, group=True)
        process.wait(timeout=10)
        return family

    def stop(self, name: str, timeout: float = 30) -> int:
        """SIGTERM to the process alone (as a service manager does); its exit status."""
        process = self.started[name]
        process.terminate()
        return process.wait(timeout=timeout)

    def stop_all(self) -> None:
        """SIGKILL every process a test started, its group and its descendants (job
        processes have groups of their own). Tests need no graceful shutdown here."""
        family = [pid for p in self.started.values() for pid in (p.pid, *descendants(p.pid))]
        for pid in family:
            _signal(pid, signal.SIGKILL, group=True)
            _signal(pid, signal.SIGKILL, group=False)
        for process in self.started.values():
            process.wait(timeout=10)
        deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
        while (leftover := [pid for pid in family if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not leftover, f"processes survived the test: {[command_line(p) for p in leftover]}"


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class JobView:
    id: str
    kind: str
    state: str
    attempt: int
    progress: float
    message: str | None
    error: str | None
    worker: str | None
    started_at: Any
    finished_at: Any
    mlflow_run_id: str | None


@dataclass
class Backend:
    name: str
    settings: Settings
    db: Database
    processes: Processes
    redis_url: str | None = None
    _celery: Any = None

    @property
    def celery(self) -> Any:
        if self._celery is None:
            self._celery = make_celery(self.settings)
        return self._celery

    # -- submitting, as the API does: commit, then enqueue, then mark enqueued

    def submit(self, spec: dict[str, Any], *, force: bool = False, send: bool = True) -> str:
        with self.db.session() as session:
            submission = jobstore.submit_experiment(
                session, ExperimentSpec.model_validate(spec), force=force
            )
            session.commit()
            experiment = submission.experiment
            train = jobstore.train_job(experiment)
            experiment_id, train_id, queue = experiment.id, train.id, train.queue
        if send:
            self.send([(train_id, queue)])
        return experiment_id

    def send(self, jobs: list[tuple[str, str]]) -> None:
        for job_id, queue in jobs:
            enqueue(self.celery, job_id, queue, self.settings.broker_timeout_s)
        with self.db.session() as session:
            jobstore.mark_enqueued(session, [job_id for job_id, _ in jobs])
            session.commit()

    def cancel(self, experiment_id: str) -> None:
        with self.db.session() as session:
            jobstore.request_cancel(session, session.get(Experiment, experiment_id))
            session.commit()

    # -- reading

    def jobs(self, experiment_id: str) -> dict[str, JobView]:
        """The experiment's jobs by kind."""
        with self.db.session() as session:
            experiment = session.get(Experiment, experiment_id, populate_existing=True)
            assert experiment is not None
            return {
                job.kind: JobView(
                    job.id,
                    job.kind,
                    job.state,
                    job.attempt,
                    job.progress,
                    job.message,
                    job.error,
                    job.worker,
                    job.started_at,
                    job.finished_at,
                    job.mlflow_run_id,
                )
                for job in session.query(Job).filter(Job.experiment_id == experiment_id)
            }

    def train(self, experiment_id: str) -> JobView:
        return self.jobs(experiment_id)["train"]

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            experiment = session.get(Experiment, experiment_id, populate_existing=True)
            assert experiment is not None
            return {"metrics": experiment.metrics, "mlflow_run_id": experiment.mlflow_run_id}

    def wait_finished(self, experiment_id: str, timeout: float = 90) -> dict[str, JobView]:
        def finished() -> dict[str, JobView] | None:
            jobs = self.jobs(experiment_id)
            states = {job.state for job in jobs.values()}
            return jobs if states <= {"succeeded", "failed", "cancelled"} else None

        return self.wait(finished, timeout, f"experiment {experiment_id} to finish", every=0.2)

    def wait(self, probe: Callable[[], T | None], timeout: float, what: str, **kw: Any) -> T:
        """``wait_for`` that shows the processes' logs when it fails."""
        return wait_for(probe, timeout, what, details=self.processes.logs, **kw)

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.settings.tracking_uri)

    # -- processes

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        """``celery -A worker.app worker`` exactly as the launcher runs it on a CPU node."""
        from worker.launcher import plan_workers

        (spec,) = plan_workers([], loglevel="INFO")
        return self.processes.start(name, spec.argv)

    def start_launcher(self, *args: str, name: str = "launcher") -> subprocess.Popen[bytes]:
        """``regbench worker ARGS`` (the click command, as client/cli.py registers it)."""
        code = "from service.worker_commands import worker; worker()"
        return self.processes.start(name, [sys.executable, "-c", code, *args])

    def start_reconciler(
        self, *, interval: float = 0.5, grace: float = 60, name: str = "reconciler"
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "worker.reconciler", "--interval", str(interval)]
        return self.processes.start(name, [*argv, "--grace", str(grace)])

    def job_child(self, worker: str = "worker") -> int | None:
        """The pid of the job process under a worker, if one runs."""
        for pid in descendants(self.processes.started[worker].pid):
            if "worker.child" in command_line(pid) and alive(pid):
                return pid
        return None


@pytest.fixture(autouse=True)
def _quiet_kombu() -> None:
    # kombu's SQLAlchemy transport uses a loader SQLAlchemy 2.1 deprecates; not ours.
    warnings.filterwarnings("ignore", message=".*noload.*", category=DeprecationWarning)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the session (its schema takes seconds to create); each test
    logs into an MLflow experiment of its own."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the schema now, once
    return uri


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database of this test session's own (an empty one, picked at random)."""
    ensure_redis()
    free = []
    for number in range(1, 16):
        if number in RESERVED_REDIS_DBS:
            continue
        with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number) as client:
            if client.dbsize() == 0:
                free.append(number)
    if not free:
        pytest.fail("no empty Redis database (1-15) is free for the worker tests")
    number = random.choice(free)
    try:
        yield number
    finally:
        with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number) as client:
            client.flushdb()


def _make_backend(
    name: str, tmp_path: Path, mlflow_uri: str, database_url: str | None, broker_url: str | None
) -> Iterator[Backend]:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_experiment": f"worker-tests-{uuid.uuid4().hex[:8]}",
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "heartbeat_stale_s": HEARTBEAT_STALE_S,
        "visibility_timeout_s": 60,
        "database_url": database_url,
        "broker_url": broker_url,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
    env.update(
        {f"REGBENCH_{k.upper()}": str(v) for k, v in values.items() if v is not None},
        PYTHONUNBUFFERED="1",
    )
    settings = Settings(**values)
    upgrade_database(settings.job_store_url)
    db = Database(settings.job_store_url)
    backend = Backend(name, settings, db, Processes(tmp_path / "logs", env), broker_url)
    try:
        yield backend
    finally:
        shutdown_slots()  # a warm job process started by a test that supervised in-process
        backend.processes.stop_all()
        if backend._celery is not None:
            backend._celery.close()
        db.dispose()
        if broker_url is not None:
            with redis.Redis.from_url(broker_url) as client:
                client.flushdb()


@pytest.fixture
def embedded(tmp_path: Path, mlflow_uri: str) -> Iterator[Backend]:
    """The default configuration: SQLite job store, SQLite broker, local MLflow store."""
    yield from _make_backend("embedded", tmp_path, mlflow_uri, None, None)


@pytest.fixture
def cluster(tmp_path: Path, mlflow_uri: str, postgres_url: str, redis_db: int) -> Iterator[Backend]:
    """The cluster configuration: PostgreSQL job store, Redis broker."""
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    yield from _make_backend("cluster", tmp_path, mlflow_uri, postgres_url, broker)


@pytest.fixture(params=["embedded", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)
