"""Retry: a sweep's (or an experiment's) failed and cancelled jobs back in the queue, the
succeeded ones untouched; the same owner checks as cancel. No worker runs: the job store
and the broker are read directly."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from service.tables import Experiment, Job, JobState, Sweep, utcnow
from tests.api.conftest import SPEC, Api, broker_job_ids
from tests.api.test_owners import Tokens, post, tokens, users_api  # noqa: F401 (fixtures)

SWEEPS = "/api/v1/sweeps"
EXPERIMENTS = "/api/v1/experiments"
SWEEP: dict[str, Any] = {
    "name": "retry",
    "base": SPEC,
    "grid": {"regularizers": [[], [{"name": "l2", "weight": 0.001}]], "training.seed": [0, 1]},
}


def job_rows(api: Api, experiment_id: str) -> dict[str, dict[str, Any]]:
    """kind -> the job's columns that a retry may change."""
    with api.database.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        return {
            job.kind: {
                "id": job.id,
                "state": job.state,
                "attempt": job.attempt,
                "error": job.error,
                "finished_at": job.finished_at,
                "cancel_requested": job.cancel_requested,
            }
            for job in experiment.jobs
        }


def settle(api: Api, experiment_id: str, train: JobState, analysis: JobState) -> None:
    """The experiment's train and analysis jobs ended so, as a worker would leave them."""
    now = utcnow()
    with api.database.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        for job in experiment.jobs:
            job.state = train if job.kind == "train" else analysis
            job.attempt, job.started_at, job.finished_at = 2, now - timedelta(seconds=5), now
            job.progress = 1.0 if job.state == JobState.SUCCEEDED else 0.4
            if job.state == JobState.FAILED:
                job.error = "CUDA out of memory"
        session.commit()


def test_retry_requeues_failed_and_cancelled_experiments_only(any_api: Api) -> None:
    sweep = any_api.client.post(SWEEPS, json=SWEEP).json()
    done, failed, cancelled, analysis_failed = (p["id"] for p in sweep["experiments"])
    settle(any_api, done, JobState.SUCCEEDED, JobState.SUCCEEDED)
    settle(any_api, failed, JobState.FAILED, JobState.FAILED)  # "not run: the job it needs"
    assert any_api.client.post(f"{EXPERIMENTS}/{cancelled}/cancel").status_code == 200
    settle(any_api, analysis_failed, JobState.SUCCEEDED, JobState.FAILED)
    with any_api.database.session() as session:  # a report of the finished sweep exists
        row = session.get(Sweep, sweep["id"])
        assert row is not None
        row.report_status, row.report_run_id = "done", "r1"
        session.commit()
    before = {e: job_rows(any_api, e) for e in (done, failed, cancelled, analysis_failed)}
    on_broker = Counter(broker_job_ids(any_api.settings, any_api.queue))
    assert any_api.client.get(f"{SWEEPS}/{sweep['id']}").json()["status"] == "failed"

    response = any_api.client.post(f"{SWEEPS}/{sweep['id']}/retry")

    assert response.status_code == 200, response.text
    body = response.json()
    retried = {
        before[failed]["train"]["id"], before[failed]["calibration"]["id"],
        before[cancelled]["train"]["id"], before[cancelled]["calibration"]["id"],
        before[analysis_failed]["calibration"]["id"],
    }  # fmt: skip
    assert set(body["retried_jobs"]) == retried and body["kept_experiments"] == []
    assert body["status"] == "running" and body["experiments"]["succeeded"] == 1  # unfinished
    assert body["report"]["status"] == "none"  # built again when the sweep finishes
    for experiment_id in (failed, cancelled, analysis_failed):
        for kind, job in job_rows(any_api, experiment_id).items():
            if job["id"] in retried:
                assert job["state"] == JobState.QUEUED and job["attempt"] == 0, (kind, job)
                assert job["error"] is None and job["finished_at"] is None
                assert job["cancel_requested"] is False
    # Succeeded jobs untouched: the whole done experiment, the train job of the third.
    assert job_rows(any_api, done) == before[done]
    assert job_rows(any_api, analysis_failed)["train"] == before[analysis_failed]["train"]
    # On the broker: the retried train jobs, and the analysis whose train job succeeded;
    # the analysis of a retried train job waits for its checkpoint, as at submission.
    sent = Counter(broker_job_ids(any_api.settings, any_api.queue)) - on_broker
    assert set(sent) == {
        before[failed]["train"]["id"],
        before[cancelled]["train"]["id"],
        before[analysis_failed]["calibration"]["id"],
    }
    with any_api.database.session() as session:
        for job_id in sent:
            job = session.get(Job, job_id)
            assert job is not None and job.enqueued_at is not None
    # Nothing left to retry: an empty answer, nothing sent.
    again = any_api.client.post(f"{SWEEPS}/{sweep['id']}/retry").json()
    assert again["retried_jobs"] == []
    assert Counter(broker_job_ids(any_api.settings, any_api.queue)) - on_broker == sent


def test_retry_one_experiment_and_resubmitting_a_cancelled_one_says_so(any_api: Api) -> None:
    experiment = any_api.client.post(EXPERIMENTS, json=SPEC).json()
    any_api.client.post(f"{EXPERIMENTS}/{experiment['id']}/cancel")
    again = any_api.client.post(EXPERIMENTS, json=SPEC)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    retried = any_api.client.post(f"{EXPERIMENTS}/{experiment['id']}/retry")

    assert retried.status_code == 200, retried.text
    assert len(retried.json()["retried_jobs"]) == 2 and retried.json()["status"] == "queued"
    train = next(j for j in retried.json()["jobs"] if j["kind"] == "train")
    assert train["state"] == "queued" and train["enqueued_at"] is not None


def test_unknown_ids_are_404(api: Api) -> None:
    assert api.client.post(f"{SWEEPS}/nope/retry").status_code == 404
    assert api.client.post(f"{EXPERIMENTS}/nope/retry").status_code == 404


def test_only_the_owner_or_an_admin_retries(users_api: Api, tokens: Tokens) -> None:  # noqa: F811
    ann_sweep = post(users_api, SWEEPS, "ann", tokens, json=SWEEP).json()
    assert post(users_api, f"{SWEEPS}/{ann_sweep['id']}/cancel", "ann", tokens).status_code == 200

    refused = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/retry", "bob", tokens)
    assert refused.status_code == 403
    assert "belongs to 'ann'" in refused.json()["detail"]
    one = ann_sweep["experiments"][0]["id"]
    assert post(users_api, f"{EXPERIMENTS}/{one}/retry", "bob", tokens).status_code == 403
    for point in ann_sweep["experiments"]:  # untouched by the refused requests
        assert users_api.experiment(point["id"])["status"] == "cancelled"

    mine = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/retry", "ann", tokens)
    assert mine.status_code == 200 and len(mine.json()["retried_jobs"]) == 8
    for point in ann_sweep["experiments"]:
        assert users_api.experiment(point["id"])["status"] == "queued"
    # An admin retries anyone's.
    post(users_api, f"{SWEEPS}/{ann_sweep['id']}/cancel", "ann", tokens)
    by_admin = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/retry", "root", tokens)
    assert by_admin.status_code == 200 and len(by_admin.json()["retried_jobs"]) == 8
