"""The API process killed (SIGKILL) while it writes a large sweep, under uvicorn, on the
embedded default (SQLite) and on PostgreSQL (the faults' own): the job store holds the
whole sweep or nothing of it, and the same sweep submitted again to a new API process is
complete, every job queued once and nothing trained."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from contextlib import closing
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from service.tables import Experiment, Job, JobKind, Sweep, SweepMember
from tests.faults.conftest import Outcome, free_port
from tests.worker.conftest import Backend, embedded  # noqa: F401 (a fixture)

POINTS = 1000  # the default REGBENCH_MAX_SWEEP_SIZE
BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "calibration"}, {"kind": "geometry"}],
}
JOBS_PER_POINT = 1 + len(BASE["analyses"])

pytestmark = pytest.mark.slow  # two 1000-point sweeps and three API processes per store


def body(name: str, first_seed: int) -> dict[str, Any]:
    seeds = list(range(first_seed, first_seed + POINTS // 2))
    grid = {"regularizers": [[], [{"name": "l2", "weight": 0.001}]], "training.seed": seeds}
    return {"name": name, "base": BASE, "grid": grid}


def start_api(backend: Backend, name: str) -> httpx.Client:
    port = free_port()
    backend.processes.start(
        name,
        [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port)],
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

    def healthy() -> bool | None:
        try:
            return client.get("/healthz").status_code == 200 or None
        except httpx.TransportError:
            return None

    backend.wait(healthy, 60, f"{name} to answer /healthz")
    return client


def writing(backend: Backend) -> bool:
    """Whether some connection (the API's) holds a write transaction on the job store."""
    url = make_url(backend.settings.job_store_url)
    if url.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(url.database), timeout=0)) as probe:
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc), exc
                return True
            probe.rollback()
            return False
    with backend.db.engine.connect() as connection:
        writers = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
            )
        )
        return bool(writers.scalar())


def post_in_background(
    client: httpx.Client, document: dict[str, Any]
) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def post() -> None:
        try:
            outcome.append(client.post("/api/v1/sweeps", json=document))
        except httpx.TransportError as exc:  # the server died under it
            outcome.append(exc)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_writes(backend: Backend, thread: threading.Thread) -> float:
    """When the API started writing (polled), or fail if it answered first."""
    while not writing(backend):
        assert thread.is_alive(), "the API answered before it was seen writing"
        time.sleep(0.005)
    return time.monotonic()


def counts(backend: Backend, name: str) -> tuple[int, int, int, int]:
    """(sweeps named ``name``, their members, experiments, jobs) in the job store."""
    with backend.db.session() as session:
        ids = list(session.scalars(select(Sweep.id).where(Sweep.name == name)))
        members = session.scalar(
            select(func.count()).select_from(SweepMember).where(SweepMember.sweep_id.in_(ids))
        )
        experiments = session.scalar(select(func.count()).select_from(Experiment))
        jobs = session.scalar(select(func.count()).select_from(Job))
        return len(ids), members or 0, experiments or 0, jobs or 0


@pytest.fixture(params=["embedded", "faulty_cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


def test_an_api_killed_mid_sweep_leaves_all_or_nothing_and_a_resubmission_completes_it(
    backend: Backend, reliability: Outcome
) -> None:
    api = start_api(backend, "api")
    # A first sweep of the same size, timed: how long its writes take here.
    thread, outcome = post_in_background(api, body("warm-up", 0))
    started = wait_for_writes(backend, thread)
    thread.join(timeout=300)
    [warm] = outcome
    assert warm.status_code == 201, warm.text
    writes_s = time.monotonic() - started
    stored = (POINTS, POINTS * JOBS_PER_POINT)  # the warm-up's experiments and jobs

    # The same size again, killed a quarter into its writes (before its commit).
    document = body("killed", 10_000)
    thread, outcome = post_in_background(api, document)
    wait_for_writes(backend, thread)
    time.sleep(writes_s / 4)
    wait_for_writes(backend, thread)  # still writing: killed inside its transaction
    backend.processes.kill("api")
    killed_at = time.monotonic()
    thread.join(timeout=30)
    assert outcome and isinstance(outcome[0], httpx.TransportError), outcome
    sweeps, members, experiments, jobs = counts(backend, "killed")
    nothing = (0, 0, *stored)
    whole = (1, POINTS, stored[0] + POINTS, stored[1] + POINTS * JOBS_PER_POINT)
    assert (sweeps, members, experiments, jobs) in (nothing, whole), (
        f"half a sweep: {sweeps} sweep(s), {members} members, {experiments} experiments, "
        f"{jobs} jobs in the store"
    )

    # Submitted again to a new API process: the whole sweep, every train job enqueued.
    api = start_api(backend, "api-again")
    again = api.post("/api/v1/sweeps", json=document)
    recovered = time.monotonic() - killed_at
    assert again.status_code in (200, 201), again.text
    answer = again.json()
    assert answer["size"] == POINTS and len(answer["experiments"]) == POINTS
    assert counts(backend, "killed") == whole
    if again.status_code == 201:  # recorded by this request: sent by it too
        ids = [point["id"] for point in answer["experiments"]]
        with backend.db.session() as session:
            unsent = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.experiment_id.in_(ids),
                    Job.kind == JobKind.TRAIN,
                    Job.enqueued_at.is_(None),
                )
            )
        assert unsent == 0

    # Every job of both sweeps once, queued (no worker runs here), nothing trained.
    with backend.db.session() as session:
        states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        attempts = session.scalar(select(func.max(Job.attempt)))
    assert states == {"queued": whole[3]}, states
    assert not attempts, attempts
    client = backend.mlflow()
    mlflow_experiment = client.get_experiment_by_name(backend.settings.mlflow_experiment)
    assert mlflow_experiment is None or not client.search_runs([mlflow_experiment.experiment_id])
    store = "SQLite (embedded)" if backend.name == "embedded" else "PostgreSQL"
    left = "nothing" if (sweeps, members) == (0, 0) else "the whole sweep"
    reliability.record(
        f"the API SIGKILLed a quarter into writing a {POINTS}-point sweep on {store}",
        f"{left} of it in the job store; the same sweep submitted to a new API process "
        f"was complete ({again.status_code}), every job queued once",
        recovered,
    )
