"""Submitting, reading, listing and cancelling experiments; adding analyses."""

from __future__ import annotations

from itertools import product
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from api import operations
from regcore.spec import ExperimentSpec
from service import jobstore
from service.tables import Experiment, Job, JobState, utcnow
from tests.api.conftest import SPEC, Api, broker_job_ids

EXPERIMENTS = "/api/v1/experiments"


def train_of(experiment: dict[str, Any]) -> dict[str, Any]:
    return next(job for job in experiment["jobs"] if job["kind"] == "train")


def set_state(api: Api, job_id: str, state: JobState) -> None:
    with api.database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = state
        session.commit()


# --------------------------------------------------------------------------- submit


def test_submit_records_commits_and_enqueues_the_train_job(any_api: Api) -> None:
    response = any_api.client.post(EXPERIMENTS, json=SPEC)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True and body["status"] == "queued"
    train = train_of(body)
    assert train["state"] == "queued" and train["enqueued_at"] is not None
    assert train["queue"] == any_api.queue
    analysis = next(job for job in body["jobs"] if job["kind"] == "calibration")
    assert analysis["depends_on"] == train["id"] and analysis["enqueued_at"] is None
    # The broker holds exactly the train job; its analysis waits for the checkpoint.
    assert broker_job_ids(any_api.settings, any_api.queue) == [train["id"]]
    # The job store says so too, after the request: committed, then marked enqueued.
    assert train_of(any_api.experiment(body["id"]))["enqueued_at"] is not None
    # The MLflow experiment exists from the submission on.
    mlflow = MlflowClient(any_api.settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(any_api.settings.mlflow_experiment)
    assert experiment is not None and body["mlflow_experiment_id"] == experiment.experiment_id


def test_identical_spec_gives_the_existing_experiment_unless_forced(any_api: Api) -> None:
    first = any_api.client.post(EXPERIMENTS, json=SPEC).json()
    relabelled = {**SPEC, "name": "another label", "training": {"epochs": 1, "device": "cpu"}}
    again = any_api.client.post(EXPERIMENTS, json=relabelled)
    assert again.status_code == 200
    assert again.json()["id"] == first["id"] and again.json()["created"] is False
    forced = any_api.client.post(EXPERIMENTS, params={"force": "true"}, json=SPEC)
    assert forced.status_code == 201 and forced.json()["id"] != first["id"]
    enqueued = broker_job_ids(any_api.settings, any_api.queue)
    assert enqueued == [train_of(first)["id"], train_of(forced.json())["id"]]


@pytest.mark.parametrize(
    ("change", "loc", "names"),
    [
        ({"regularizers": [{"name": "jacobain"}]}, ["regularizers", 0, "name"], "jacobian"),
        ({"regularizers": [{"name": "l2", "weight": -1}]}, ["regularizers", 0, "weight"], None),
        ({"analyses": [{"kind": "boundry"}]}, ["analyses", 0, "kind"], "boundary"),
        ({"model": {"name": "mlp", "widht": 3}}, ["model", "widht"], "hidden"),
        ({"training": {"epochs": 0}}, ["training", "epochs"], None),
    ],
)
def test_invalid_spec_is_422_with_the_field_path_and_valid_names(
    api: Api, change: dict[str, Any], loc: list[Any], names: str | None
) -> None:
    response = api.client.post(EXPERIMENTS, json={**SPEC, **change})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [error["loc"] for error in errors] == [["body", *loc]]
    if names is not None:
        assert names in errors[0]["msg"]
    with api.database.session() as session:
        assert session.query(Experiment).count() == 0


def test_a_body_that_is_no_spec_is_422(api: Api) -> None:
    assert api.client.post(EXPERIMENTS, content=b"not json").status_code == 422
    missing = api.client.post(EXPERIMENTS, json={"model": {"name": "mlp"}})
    assert missing.status_code == 422
    assert ["body", "dataset"] in [error["loc"] for error in missing.json()["detail"]]


# --------------------------------------------------------------------------- read, list


@pytest.mark.parametrize(
    "path", ["", "/cancel", "/analyses", "/metrics", "/artifacts", "/artifacts/model.pt"]
)
def test_unknown_experiment_is_404(api: Api, path: str) -> None:
    method = api.client.post if path in ("/cancel", "/analyses") else api.client.get
    kwargs: dict[str, Any] = {"json": [{"kind": "plots"}]} if path == "/analyses" else {}
    response = method(f"{EXPERIMENTS}/f00d{path}", **kwargs)
    assert response.status_code == 404
    assert "f00d" in response.json()["detail"]


def test_read_experiment_shows_jobs_metrics_and_the_mlflow_link(api: Api) -> None:
    experiment = api.add_experiment()
    train = jobstore.train_job(experiment)
    with api.database.session() as session:
        claimed = jobstore.claim(
            session, train.id, worker="w1", device="cuda:0", stale_before=utcnow(), max_attempts=3
        )
        assert claimed is not None
        jobstore.heartbeat(session, train.id, "w1", progress=0.25, message="epoch 1/4")
        jobstore.set_mlflow_run(session, train.id, "run123")
        stored = session.get(Experiment, experiment.id)
        assert stored is not None
        stored.mlflow_experiment_id = "7"
        stored.metrics = {"test_accuracy": 0.9}
        session.commit()
    body = api.experiment(experiment.id)
    assert body["status"] == "running" and body["spec"]["model"]["hidden"] == [16]
    job = train_of(body)
    assert (job["state"], job["attempt"], job["progress"]) == ("running", 1, 0.25)
    assert (job["message"], job["device"], job["worker"]) == ("epoch 1/4", "cuda:0", "w1")
    assert body["metrics"] == {"test_accuracy": 0.9} and body["mlflow_run_id"] == "run123"
    assert body["mlflow_url"] == "http://mlflow.example:5000/#/experiments/7/runs/run123"


def test_list_pages_and_filters_by_sweep_and_status(api: Api) -> None:
    experiments = [api.add_experiment(training={"seed": seed}) for seed in range(5)]
    ids = [experiment.id for experiment in experiments]
    set_state(api, jobstore.train_job(experiments[0]).id, JobState.FAILED)
    page = api.client.get(EXPERIMENTS, params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 5 and len(page["data"]) == 2
    everything = api.client.get(EXPERIMENTS, params={"limit": 500}).json()["data"]
    assert sorted(e["id"] for e in everything) == sorted(ids)
    assert [e["id"] for e in everything[1:3]] == [e["id"] for e in page["data"]]
    failed_only = api.client.get(EXPERIMENTS, params={"status": "failed"}).json()
    assert failed_only["count"] == 1 and failed_only["data"][0]["id"] == ids[0]
    assert api.client.get(EXPERIMENTS, params={"status": "queued"}).json()["count"] == 4
    assert api.client.get(EXPERIMENTS, params={"sweep": "none"}).json() == {"data": [], "count": 0}
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        response = api.client.get(EXPERIMENTS, params=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "query"


def test_status_filter_agrees_with_experiment_status(api: Api) -> None:
    """The SQL filter and jobstore.experiment_status give every experiment the same word,
    for every combination of train and analysis states."""
    states = list(JobState)
    experiments = []
    with api.database.session() as session:
        for number, (train_state, analysis_state) in enumerate(product(states, states)):
            spec = ExperimentSpec.model_validate({**SPEC, "training": {"seed": number}})
            experiment = jobstore.submit_experiment(session, spec).experiment
            for job in experiment.jobs:
                job.state = train_state if job.kind == "train" else analysis_state
            experiments.append(experiment)
        session.commit()
        for status in states:
            expected = {e.id for e in experiments if jobstore.experiment_status(e) == status}
            found, count = operations.list_experiments(
                session, sweep=None, status=status, limit=500, offset=0
            )
            assert {e.id for e in found} == expected and count == len(expected), status


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_cancels_every_job_and_is_idempotent(api: Api) -> None:
    experiment = api.add_experiment()
    response = api.client.post(f"{EXPERIMENTS}/{experiment.id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert {job["state"] for job in body["jobs"]} == {"cancelled"}
    assert sorted(body["cancelled_jobs"]) == sorted(job.id for job in experiment.jobs)
    again = api.client.post(f"{EXPERIMENTS}/{experiment.id}/cancel")
    assert again.status_code == 200 and again.json()["cancelled_jobs"] == []


def test_cancel_running_asks_the_worker_to_stop(api: Api) -> None:
    experiment = api.add_experiment()
    train = jobstore.train_job(experiment)
    with api.database.session() as session:
        jobstore.claim(session, train.id, worker="w1", device="cpu", stale_before=utcnow(),
                       max_attempts=3)  # fmt: skip
        session.commit()
    body = api.client.post(f"{EXPERIMENTS}/{experiment.id}/cancel").json()
    job = train_of(body)
    assert job["state"] == "running" and job["cancel_requested"] is True
    with api.database.session() as session:
        assert jobstore.heartbeat(session, train.id, "w1")  # the worker sees the request


# --------------------------------------------------------------------------- analyses


def test_analyses_wait_for_a_queued_train_job(api: Api) -> None:
    experiment = api.add_experiment(analyses=[])
    response = api.client.post(
        f"{EXPERIMENTS}/{experiment.id}/analyses",
        json=[{"kind": "geometry", "samples": 64}, "plots"],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    added = [job for job in body["jobs"] if job["id"] in body["added_jobs"]]
    assert [job["kind"] for job in added] == ["geometry", "plots"]
    assert added[0]["payload"]["samples"] == 64
    assert all(job["state"] == "queued" and job["enqueued_at"] is None for job in added)
    assert broker_job_ids(api.settings, api.queue) == []  # the worker enqueues them later


def test_analyses_after_training_are_enqueued_at_once(any_api: Api) -> None:
    experiment = any_api.add_experiment(analyses=[])
    set_state(any_api, jobstore.train_job(experiment).id, JobState.SUCCEEDED)
    response = any_api.client.post(
        f"{EXPERIMENTS}/{experiment.id}/analyses", json=[{"kind": "calibration"}]
    )
    assert response.status_code == 201, response.text
    added = response.json()["added_jobs"]
    assert broker_job_ids(any_api.settings, any_api.queue) == added
    job = next(j for j in any_api.experiment(experiment.id)["jobs"] if j["id"] == added[0])
    assert job["enqueued_at"] is not None


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_analyses_on_a_failed_train_job_are_409(api: Api, state: JobState) -> None:
    experiment = api.add_experiment(analyses=[])
    set_state(api, jobstore.train_job(experiment).id, state)
    response = api.client.post(f"{EXPERIMENTS}/{experiment.id}/analyses", json=["plots"])
    assert response.status_code == 409 and "force" in response.json()["detail"]
    assert len(api.experiment(experiment.id)["jobs"]) == 1


@pytest.mark.parametrize(
    ("body", "loc", "names"),
    [
        ([{"kind": "boundry"}], ["body", 0, "kind"], "boundary"),
        ([{"kind": "geometry", "samples": -1}], ["body", 0, "samples"], None),
        ([{"kind": "plots", "dpi2": 1}], ["body", 0, "dpi2"], "valid parameters"),
        ([], ["body"], None),
        ({"kind": "plots"}, ["body"], None),
    ],
)
def test_invalid_analyses_are_422_with_the_path(
    api: Api, body: Any, loc: list[Any], names: str | None
) -> None:
    experiment = api.add_experiment(analyses=[])
    response = api.client.post(f"{EXPERIMENTS}/{experiment.id}/analyses", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert errors[0]["loc"] == loc
    if names is not None:
        assert names in errors[0]["msg"]
    assert len(api.experiment(experiment.id)["jobs"]) == 1
