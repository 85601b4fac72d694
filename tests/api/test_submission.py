"""Submission at scale over HTTP and on the real brokers (embedded SQLite broker, Redis):
jobs sent in publish batches, in order, marked enqueued only once sent; a page of sweeps
described exactly as each sweep on its own."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid
from contextlib import closing
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from service import broker
from service.settings import Settings
from service.tables import Experiment, JobState, utcnow
from tests.api.conftest import SPEC, Api, broker_job_ids
from tests.api.test_app import DEAD_BROKER

SWEEPS = "/api/v1/sweeps"
ANALYSES = [{"kind": "calibration"}, {"kind": "geometry", "samples": 10}]


@pytest.mark.parametrize("jobs", [1, 7])
def test_enqueue_many_sends_every_job_in_order_in_batches(
    any_settings: Settings, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    monkeypatch.setattr(broker, "BATCH_SIZE", 3)  # 7 jobs: batches of 3, 3 and 1
    app = broker.make_celery(any_settings)
    try:
        ids = [f"job-{number}" for number in range(jobs)]
        other = f"{any_settings.default_queue}-other"
        pairs = [(job_id, other if number == 4 else any_settings.default_queue)
                 for number, job_id in enumerate(ids)]  # fmt: skip
        assert broker.enqueue_many(app, pairs, timeout_s=2.0) == ids
        assert broker_job_ids(any_settings, any_settings.default_queue) == [
            job_id for job_id, queue in pairs if queue == any_settings.default_queue
        ]
        assert broker_job_ids(any_settings, other) == ids[4:5]
        assert broker.enqueue_many(app, [], timeout_s=2.0) == []
    finally:
        app.close()


def broker_messages(settings: Settings, queue: str) -> list[dict[str, Any]]:
    """The messages waiting in ``queue``, oldest first, as the transport stores them."""
    url = settings.celery_broker_url
    if url.startswith("redis://"):
        with redis.Redis.from_url(url) as client:  # LPUSHed: newest first
            payloads = [raw.decode() for raw in reversed(client.lrange(queue, 0, -1))]
    else:
        with closing(sqlite3.connect(settings.data_dir / "broker.db")) as connection:
            payloads = [
                row[0]
                for row in connection.execute(
                    "SELECT m.payload FROM kombu_message m JOIN kombu_queue q "
                    "ON m.queue_id = q.id WHERE q.name = ? ORDER BY m.id",
                    (queue,),
                )
            ]
    return [json.loads(payload) for payload in payloads]


def as_sent_for(message: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A message without what is its own: its task id (a fresh uuid, also its root id and
    correlation id), its job (the argument), the transport's delivery tag (a fresh uuid);
    what two messages of the task for different jobs have in common."""
    headers = dict(message["headers"])
    task_id = headers.pop("id")
    assert uuid.UUID(task_id) and headers.pop("root_id") == task_id
    assert headers.pop("argsrepr") == repr([job_id])
    properties = dict(message["properties"])
    assert properties.pop("correlation_id") == task_id
    properties.pop("delivery_tag")
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert args == [job_id]
    rest = {k: v for k, v in message.items() if k not in ("headers", "properties", "body")}
    return {"headers": headers, "properties": properties, "body": [kwargs, embed], **rest}


def test_a_bulk_message_is_the_message_celery_sends_for_its_job(any_settings: Settings) -> None:
    """enqueue_many sends a queue's first job through send_task and copies the others from
    it: every one is, byte for byte but its job id, what send_task sends for that job."""
    app = broker.make_celery(any_settings)
    queue = any_settings.default_queue
    try:
        broker.enqueue(app, "job-alone", queue, timeout_s=2.0)  # Celery's own send_task
        jobs = [("job-first", queue), ("job-copied", queue), ("job-again", queue)]
        assert broker.enqueue_many(app, jobs, timeout_s=2.0) == [job for job, _ in jobs]
    finally:
        app.close()
    alone, *bulk = broker_messages(any_settings, queue)
    assert alone["headers"]["task"] == broker.RUN_JOB_TASK
    expected = as_sent_for(alone, "job-alone")
    for message, (job_id, _) in zip(bulk, jobs, strict=True):
        assert as_sent_for(message, job_id) == expected
    task_ids = [message["headers"]["id"] for message in (alone, *bulk)]
    assert len(set(task_ids)) == 4  # each message its own task id


def test_a_celery_worker_runs_every_bulk_message_in_order(any_settings: Settings) -> None:
    """A real Celery worker (in this process, the task name the API sends) takes the copied
    messages as it takes send_task's: one task call per job, with its id."""
    app = broker.make_celery(any_settings)
    queue = any_settings.default_queue
    received: list[tuple[str, str]] = []

    @app.task(name=broker.RUN_JOB_TASK, bind=True, shared=False)  # this app only
    def run_job(task: Any, job_id: str) -> None:
        received.append((task.request.id, job_id))

    ids = [f"job-{number}" for number in range(7)]
    try:
        assert broker.enqueue_many(app, [(job_id, queue) for job_id in ids], 2.0) == ids
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue]):
            deadline = time.monotonic() + 60
            while len(received) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        app.close()
    assert [job_id for _, job_id in received] == ids
    assert len({task_id for task_id, _ in received}) == len(ids)


def test_enqueue_many_with_the_broker_down_says_nothing_was_sent(
    embedded_settings: Settings,
) -> None:
    settings = embedded_settings.model_copy(update={"broker_url": DEAD_BROKER})
    app = broker.make_celery(settings)
    try:
        with pytest.raises(broker.BrokerUnavailableError, match="6399") as caught:
            broker.enqueue_many(app, [("a", "cpu"), ("b", "cpu")], timeout_s=0.5)
        assert caught.value.sent == []
    finally:
        app.close()


def test_a_sweep_sends_its_train_jobs_in_grid_order_then_marks_them_enqueued(
    any_api: Api,
) -> None:
    body = {"name": "order", "base": {**SPEC, "analyses": ANALYSES}, "grid": {
        "regularizers": [[], [{"name": "l2", "weight": 0.001}]], "training.seed": [2, 0, 1],
    }}  # fmt: skip
    response = any_api.client.post(SWEEPS, json=body)
    assert response.status_code == 201, response.text
    points = response.json()["experiments"]
    assert [p["seed"] for p in points] == [2, 0, 1, 2, 0, 1]
    trains = []
    for point in points:
        jobs = any_api.experiment(point["id"])["jobs"]
        train = next(job for job in jobs if job["kind"] == "train")
        analyses = [job for job in jobs if job["kind"] != "train"]
        assert train["state"] == "queued" and train["enqueued_at"] is not None
        assert [job["kind"] for job in analyses] == ["calibration", "geometry"]
        assert all(job["depends_on"] == train["id"] for job in analyses)
        assert all(job["enqueued_at"] is None for job in analyses)  # wait for the checkpoint
        trains.append(train["id"])
    assert broker_job_ids(any_api.settings, any_api.queue) == trains


def test_a_page_of_sweeps_is_each_sweep_described_on_its_own(any_api: Api) -> None:
    grids: list[dict[str, Any]] = [
        {"training.seed": [0, 1, 2]},
        {"training.seed": [2, 3]},  # shares an experiment with the first
        {"training.seed": [4]},
    ]
    ids = []
    for number, grid in enumerate(grids):
        body = {"name": f"page {number}", "base": SPEC, "grid": grid}
        response = any_api.client.post(SWEEPS, json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    now = utcnow()
    first = any_api.client.get(f"{SWEEPS}/{ids[0]}").json()
    with any_api.database.session() as session:
        points = any_api.client.get("/api/v1/experiments", params={"sweep": ids[0]}).json()
        experiments = [session.get(Experiment, p["id"]) for p in points["data"]]
        done, running, failed = experiments
        for job in done.jobs:  # type: ignore[union-attr]
            job.state, job.progress = JobState.SUCCEEDED, 1.0
            job.started_at, job.finished_at = now - timedelta(seconds=20), now
        train = next(job for job in running.jobs if job.kind == "train")  # type: ignore[union-attr]
        train.state, train.progress, train.worker = JobState.RUNNING, 0.25, "w1"
        train.started_at = now
        train.heartbeat_at = None  # no heartbeat age: the two reads may be a moment apart
        train = next(job for job in failed.jobs if job.kind == "train")  # type: ignore[union-attr]
        train.state, train.started_at, train.finished_at = JobState.FAILED, now, now
        session.commit()
    page = any_api.client.get(SWEEPS, params={"limit": 20})
    assert page.status_code == 200
    listed = page.json()
    assert listed["count"] == 3
    assert [sweep["id"] for sweep in listed["data"]] == ids[::-1]  # newest first
    for sweep in listed["data"]:
        assert sweep == any_api.client.get(f"{SWEEPS}/{sweep['id']}").json()
    changed = any_api.client.get(f"{SWEEPS}/{ids[0]}").json()
    assert first["status"] == "queued" and changed["status"] == "running"
    assert changed["experiments"]["failed"] == 1 and changed["experiments"]["running"] == 1
    assert [job["seed"] for job in changed["running"]] == [1]
    limited = any_api.client.get(SWEEPS, params={"limit": 1, "offset": 1}).json()
    assert [sweep["id"] for sweep in limited["data"]] == [ids[1]] and limited["count"] == 3
