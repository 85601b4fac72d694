"""Submission at scale over HTTP and on the real brokers (embedded SQLite broker, Redis):
jobs sent in publish batches, in order, marked enqueued only once sent; a page of sweeps
described exactly as each sweep on its own."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

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
