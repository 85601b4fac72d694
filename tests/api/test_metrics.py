"""GET /metrics: Prometheus metrics read from the job store at scrape time."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.app import create_app
from api.prometheus import DURATION_BUCKETS_S
from service import jobstore
from service.db import Database
from service.tables import Experiment, Job, JobState, Worker, utcnow
from tests.api.conftest import Api

GPU = "gpu"
STALE_QUEUE = "old"
DEAD_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:6398/regbench"  # nothing listens
BOUNDS = [str(float(le)) for le in DURATION_BUCKETS_S] + ["+Inf"]

Samples = dict[str, dict[tuple[str, ...], float]]


def scrape(api: Api) -> Samples:
    """Sample name -> label values (ordered by label name) -> value."""
    response = api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(value for _, value in sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def run(
    session: Session,
    job_id: str,
    *,
    worker: str = "w-cpu",
    device: str = "cpu",
    end: JobState | None = None,
    started: datetime | None = None,
    seconds: float = 0.0,
) -> None:
    """Claim a job as a worker would, optionally finish it, then pin its times."""
    claimed = jobstore.claim(
        session, job_id, worker=worker, device=device, stale_before=utcnow(), max_attempts=3
    )
    assert claimed is not None
    if end is not None:
        assert jobstore.finish(session, job_id, worker, end)
    if started is not None:
        times: dict[str, Any] = {"started_at": started}
        if end is not None:
            times["finished_at"] = started + timedelta(seconds=seconds)
        session.execute(update(Job).where(Job.id == job_id).values(**times))


def set_created(session: Session, job_id: str, created: datetime) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(created_at=created))


def jobs_of(experiment: Experiment) -> tuple[str, str]:
    """(train job id, calibration job id) of an experiment with the default analysis."""
    train = jobstore.train_job(experiment)
    [analysis] = [job for job in experiment.jobs if job.id != train.id]
    return train.id, analysis.id


def test_metrics_count_jobs_depth_failures_durations_and_workers(any_api: Api) -> None:
    api, queue = any_api, any_api.queue
    now = utcnow()
    a_train, a_calib = jobs_of(api.add_experiment())  # trained 60 s; calib runnable
    b_train, _b_calib = jobs_of(api.add_experiment())  # training failed: calib fails too
    c_train, c_calib = jobs_of(api.add_experiment())  # train runnable, calib waits
    gpu = {"resources": {"queue": GPU}}
    d_train, _d_calib = jobs_of(api.add_experiment(**gpu))  # running on cuda:1
    h_train, h_calib = jobs_of(api.add_experiment(**gpu))  # both done: 120 s, 2.5 s
    e_train = jobstore.train_job(api.add_experiment(analyses=[])).id  # done in 0.5 s
    f_train = jobstore.train_job(api.add_experiment(analyses=[])).id  # done in 4000 s
    cancelled = api.add_experiment(analyses=[])
    with api.database.session() as session:
        done = JobState.SUCCEEDED
        run(session, a_train, end=done, started=now - timedelta(seconds=660), seconds=60)
        run(session, b_train, end=JobState.FAILED)
        run(session, d_train, worker="w-gpu", device="cuda:1")
        run(session, h_train, end=done, started=now - timedelta(hours=2), seconds=120)
        run(session, h_calib, end=done, started=now - timedelta(hours=1), seconds=2.5)
        run(session, e_train, end=done, started=now - timedelta(seconds=100), seconds=0.5)
        run(session, f_train, end=done, started=now - timedelta(hours=3), seconds=4000)
        experiment = session.get(Experiment, cancelled.id)
        assert experiment is not None
        jobstore.request_cancel(session, experiment)
        # a_calib was submitted long ago but runnable only since a_train ended (600 s
        # ago); c_train waited 300 s; c_calib is older still, but cannot run yet.
        set_created(session, a_calib, now - timedelta(hours=2))
        set_created(session, c_train, now - timedelta(seconds=300))
        set_created(session, c_calib, now - timedelta(hours=3))
        jobstore.worker_heartbeat(session, "w-gpu", "node1", GPU, "cuda:1")
        jobstore.worker_heartbeat(session, "w-cpu", "node2", f"{queue},{GPU}", "cpu")
        jobstore.worker_heartbeat(session, "gone", "node3", STALE_QUEUE, "cpu")
        stale = now - timedelta(seconds=10 * api.settings.heartbeat_interval_s)
        session.execute(update(Worker).where(Worker.name == "gone").values(heartbeat_at=stale))
        session.commit()

    samples = scrape(api)

    zero = dict.fromkeys(JobState, 0)
    expected_jobs = {
        (queue, "train"): {**zero, "succeeded": 3, "failed": 1, "queued": 1, "cancelled": 1},
        (queue, "calibration"): {**zero, "queued": 2, "failed": 1},
        (GPU, "train"): {**zero, "running": 1, "succeeded": 1},
        (GPU, "calibration"): {**zero, "queued": 1, "succeeded": 1},
    }
    assert samples["regbench_jobs"] == {
        (kind, q, str(state)): count
        for (q, kind), counts in expected_jobs.items()
        for state, count in counts.items()
    }
    # queued: a_calib, c_train, c_calib; c_calib and d_calib wait on their training
    assert samples["regbench_queue_depth"] == {(queue,): 2, (GPU,): 0, (STALE_QUEUE,): 0}
    assert samples["regbench_jobs_running"] == {("cuda:1", GPU): 1}
    assert samples["regbench_job_failures_total"] == {("train",): 1, ("calibration",): 1}

    train_le = [1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4]  # 0.5, 60, 120, 4000 s
    calibration_le = [0] + [1] * 13  # 2.5 s
    assert samples["regbench_job_duration_seconds_bucket"] == {
        **{("train", le): n for le, n in zip(BOUNDS, train_le, strict=True)},
        **{("calibration", le): n for le, n in zip(BOUNDS, calibration_le, strict=True)},
    }
    assert samples["regbench_job_duration_seconds_count"] == {("train",): 4, ("calibration",): 1}
    durations_sum = samples["regbench_job_duration_seconds_sum"]
    assert set(durations_sum) == {("train",), ("calibration",)}
    assert abs(durations_sum[("train",)] - 4180.5) < 1e-3
    assert abs(durations_sum[("calibration",)] - 2.5) < 1e-3

    assert samples["regbench_workers_live"] == {(queue,): 1, (GPU,): 2, (STALE_QUEUE,): 0}
    ages = samples["regbench_oldest_queued_job_age_seconds"]
    assert set(ages) == {(queue,), (GPU,), (STALE_QUEUE,)}
    assert 600 <= ages[(queue,)] < 660  # a_calib, since a_train ended
    assert ages[(GPU,)] == ages[(STALE_QUEUE,)] == 0


def test_metrics_of_an_empty_store(any_api: Api) -> None:
    """Only the default queue is known: its gauges are zero, no job series yet."""
    samples = scrape(any_api)
    default = (any_api.queue,)
    assert samples == {
        "regbench_queue_depth": {default: 0},
        "regbench_workers_live": {default: 0},
        "regbench_oldest_queued_job_age_seconds": {default: 0},
    }


def test_metrics_follow_the_store_between_scrapes(api: Api) -> None:
    train = jobstore.train_job(api.add_experiment(analyses=[]))
    assert scrape(api)["regbench_queue_depth"] == {(api.queue,): 1}
    with api.database.session() as session:
        run(session, train.id, end=JobState.FAILED)
        session.commit()
    samples = scrape(api)
    assert samples["regbench_queue_depth"] == {(api.queue,): 0}
    assert samples["regbench_job_failures_total"] == {("train",): 1}


def test_metrics_is_503_when_the_job_store_is_down(api: Api) -> None:
    working = api.app.state.database
    api.app.state.database = Database(DEAD_DATABASE)
    try:
        response = api.client.get("/metrics")
        assert response.status_code == 503
        assert "job store is unavailable" in response.json()["detail"]
    finally:
        api.app.state.database.dispose()
        api.app.state.database = working
    assert api.client.get("/metrics").status_code == 200  # back once the store is


def test_each_app_has_its_own_registry(api: Api) -> None:
    """Two apps in one process: no clash in a shared registry, each reads its store."""
    api.add_experiment(analyses=[])
    assert scrape(api)["regbench_queue_depth"] == {(api.queue,): 1}
    other = create_app(api.settings)
    with TestClient(other) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert f'regbench_queue_depth{{queue="{api.queue}"}} 1.0' in response.text
    assert other.state.metrics_registry is not api.app.state.metrics_registry
