"""Sweeps over HTTP: submit a grid, idempotency, limits and errors, progress, results,
cancel, and the sweep report (PNG and HTML through the API, a run in MLflow)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from regcore.instability import METRICS as INSTABILITY_METRICS
from regcore.instability import StoredPrediction, labels_checksum
from regcore.spec import SweepSpec
from service import jobstore, sweeps
from service.reports import RUN_KIND_TAG, SWEEP_TAG
from service.settings import Settings
from service.tables import Experiment, Job, JobState, Sweep, utcnow
from tests.api.conftest import SPEC, Api, broker_job_ids, start_api
from tests.api.test_app import DEAD_BROKER
from worker.reconciler import Reconciler

SWEEPS = "/api/v1/sweeps"
L2 = [{"name": "l2", "weight": 0.001}]
GRID: dict[str, Any] = {"regularizers": [[], L2], "training.seed": [0, 1]}
SWEEP: dict[str, Any] = {"name": "tiny", "base": SPEC, "grid": GRID}
CONFIGURATIONS = ["regularizers=none", "regularizers=l2(weight=0.001)"]


def submit(api: Api, body: dict[str, Any] = SWEEP, **params: Any) -> dict[str, Any]:
    response = api.client.post(SWEEPS, json=body, params=params)
    assert response.status_code in (200, 201), response.text
    return response.json()


def finish_all(api: Api, sweep: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """Every job of the sweep succeeded (10 s of train, 2 s of analysis), with these final
    metrics per experiment id, as workers would have recorded them."""
    now = utcnow()
    with api.database.session() as session:
        for point in sweep["experiments"]:
            experiment = session.get(Experiment, point["id"])
            assert experiment is not None
            experiment.metrics = metrics.get(point["id"], {})
            for job in experiment.jobs:
                seconds = 10 if job.kind == "train" else 2
                job.state, job.progress = JobState.SUCCEEDED, 1.0
                job.started_at, job.finished_at = now - timedelta(seconds=seconds), now
        session.commit()


# --------------------------------------------------------------------------- submit


def test_submit_expands_the_grid_records_and_enqueues_every_point(any_api: Api) -> None:
    body = any_api.client.post(SWEEPS, json=SWEEP)
    assert body.status_code == 201, body.text
    sweep = body.json()
    assert sweep["created"] is True and sweep["name"] == "tiny"
    assert sweep["size"] == 4 and sweep["new_experiments"] == 4
    points = [(p["configuration"], p["seed"]) for p in sweep["experiments"]]
    assert points == [(c, seed) for c in CONFIGURATIONS for seed in (0, 1)]  # grid order
    # One train job per experiment is on the broker; analyses wait for their checkpoint.
    trains = []
    for point in sweep["experiments"]:
        experiment = any_api.experiment(point["id"])
        assert experiment["sweep_id"] == sweep["id"]
        assert experiment["configuration"] == point["configuration"]
        assert experiment["spec"]["training"]["seed"] == point["seed"]
        trains.append(next(j["id"] for j in experiment["jobs"] if j["kind"] == "train"))
    assert sorted(broker_job_ids(any_api.settings, any_api.queue)) == sorted(trains)
    # The sweep has its own MLflow experiment; its experiments log there.
    state = any_api.client.get(f"{SWEEPS}/{sweep['id']}").json()
    mlflow = MlflowClient(any_api.settings.tracking_uri)
    assert mlflow.get_experiment(state["mlflow_experiment_id"]).name.startswith("sweep tiny ")
    assert {any_api.experiment(p["id"])["mlflow_experiment_id"] for p in sweep["experiments"]} == {
        state["mlflow_experiment_id"]
    }
    assert state["status"] == "queued" and state["size"] == 4
    assert state["experiments"] == {
        "queued": 4, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert state["jobs"]["queued"] == 8 and state["progress"] == 0.0
    assert state["eta_s"] is None  # nothing of these kinds has finished anywhere yet
    assert state["report"] == {"status": "none", "mlflow_run_id": None, "error": None, "files": []}
    listed = any_api.client.get("/api/v1/experiments", params={"sweep": sweep["id"]}).json()
    assert listed["count"] == 4


def test_resubmitting_the_same_sweep_creates_nothing(any_api: Api) -> None:
    first = submit(any_api)
    on_broker = broker_job_ids(any_api.settings, any_api.queue)
    reordered = {"grid": dict(reversed(list(GRID.items()))), "base": SPEC, "name": "tiny"}
    for body in (SWEEP, {**SWEEP, "grid": GRID}):
        again = any_api.client.post(SWEEPS, json=body)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first["id"]
        assert again.json()["created"] is False and again.json()["new_experiments"] == 0
    assert broker_job_ids(any_api.settings, any_api.queue) == on_broker
    # The same points in another order or under another name: a new sweep, no new experiment.
    other = submit(any_api, {**reordered, "name": "tiny again"})
    assert other["id"] != first["id"] and other["new_experiments"] == 0
    assert {p["id"] for p in other["experiments"]} == {p["id"] for p in first["experiments"]}
    assert any_api.client.get(SWEEPS).json()["count"] == 2
    assert any_api.client.get("/api/v1/experiments").json()["count"] == 4
    # force: a new sweep whose experiments all run again.
    forced = any_api.client.post(SWEEPS, json=SWEEP, params={"force": "true"})
    assert forced.status_code == 201 and forced.json()["new_experiments"] == 4
    assert any_api.client.get("/api/v1/experiments").json()["count"] == 8


def test_a_partial_sweep_is_completed_and_enqueued_by_the_next_submission(any_api: Api) -> None:
    """A sweep row with one experiment and no member, as an older version left a sweep
    when killed mid-request: submitting it again used to answer "200, size 0" for ever."""
    planned = sweeps.plan(SweepSpec.model_validate(SWEEP), any_api.settings.max_sweep_size)
    first = planned.points[0]
    with any_api.database.session() as session:
        partial = Sweep(
            name=planned.name,
            owner="local",  # the submitter: every request runs as the local user here
            sweep_hash=planned.sweep_hash,
            base=SWEEP["base"],
            grid=SWEEP["grid"],
            size=4,
        )
        session.add(partial)
        session.flush()
        orphan = jobstore.submit_experiments(
            session,
            [jobstore.SpecToSubmit(first.spec, first.spec_hash, first.configuration)],
            default_queue=any_api.queue,
            sweep_id=partial.id,
        ).experiment_ids[0]
        session.commit()
        sweep_id = partial.id
    assert broker_job_ids(any_api.settings, any_api.queue) == []
    response = any_api.client.post(SWEEPS, json=SWEEP)
    assert response.status_code == 200, response.text
    sweep = response.json()
    assert sweep["id"] == sweep_id and sweep["created"] is False
    assert sweep["size"] == 4 and sweep["new_experiments"] == 3
    points = [(p["configuration"], p["seed"]) for p in sweep["experiments"]]
    assert points == [(c, seed) for c in CONFIGURATIONS for seed in (0, 1)]
    assert sweep["experiments"][0]["id"] == orphan and not sweep["experiments"][0]["created"]
    trains = []
    for point in sweep["experiments"]:
        experiment = any_api.experiment(point["id"])
        trains.append(next(j for j in experiment["jobs"] if j["kind"] == "train"))
    assert sorted(broker_job_ids(any_api.settings, any_api.queue)) == sorted(
        train["id"] for train in trains
    )
    assert all(train["enqueued_at"] is not None for train in trains)
    state = any_api.client.get(f"{SWEEPS}/{sweep_id}").json()
    assert state["size"] == 4 and state["experiments"]["queued"] == 4
    again = any_api.client.post(SWEEPS, json=SWEEP)  # complete: nothing more
    assert again.status_code == 200 and again.json()["new_experiments"] == 0
    assert len(broker_job_ids(any_api.settings, any_api.queue)) == 4


def test_a_grid_past_the_limit_is_422_with_the_limit_and_records_nothing(
    embedded_settings: Settings,
) -> None:
    settings = embedded_settings.model_copy(update={"max_sweep_size": 3})
    for api in start_api(settings):
        response = api.client.post(SWEEPS, json=SWEEP)
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "grid"]
        assert "4 experiments" in error["msg"] and "limit of 3" in error["msg"]
        assert "REGBENCH_MAX_SWEEP_SIZE" in error["msg"]
        assert api.client.get(SWEEPS).json()["count"] == 0
        assert broker_job_ids(api.settings, api.queue) == []
        small = {**SWEEP, "grid": {"training.seed": [0, 1, 2]}}
        assert api.client.post(SWEEPS, json=small).status_code == 201


def test_invalid_points_are_422_naming_the_grid_entry_or_the_base(api: Api) -> None:
    grid = {
        "regularizers": [[], [{"name": "l2", "weight": -1.0}], [{"name": "l3"}]],
        "training.seed": [0, 1],
    }
    response = api.client.post(SWEEPS, json={"base": {**SPEC, "training": {"lr": 0}}, "grid": grid})
    assert response.status_code == 422
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert ("body", "grid", "regularizers", 1, 0, "weight") in errors
    unknown = errors[("body", "grid", "regularizers", 2, 0, "name")]
    assert "l3" in unknown and "l2" in unknown  # the valid choices
    assert ("body", "base", "training", "lr") in errors  # reported once, not per point
    assert len(errors) == 3
    assert api.client.get(SWEEPS).json()["count"] == 0
    for body, loc in (
        ({"base": SPEC, "grid": {"training.seed": []}}, ["body", "grid"]),
        ({"base": SPEC, "grid": {"training.seed": 3}}, ["body", "grid", "training.seed"]),
        ({"base": SPEC}, ["body", "grid"]),
        ({"base": SPEC, "grid": {}, "extra": 1}, ["body", "extra"]),
    ):
        response = api.client.post(SWEEPS, json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc


def test_a_broker_outage_keeps_the_sweep_recorded_and_names_it(embedded_settings: Settings) -> None:
    settings = embedded_settings.model_copy(
        update={"broker_url": DEAD_BROKER, "broker_timeout_s": 0.5}
    )
    for api in start_api(settings):
        response = api.client.post(SWEEPS, json=SWEEP)
        assert response.status_code == 503
        body = response.json()
        assert body["sweep_id"] in body["detail"] and "reconciler" in body["detail"]
        assert len(body["job_ids"]) == 4  # every train job, tried once
        state = api.client.get(f"{SWEEPS}/{body['sweep_id']}").json()
        assert state["size"] == 4 and state["experiments"]["queued"] == 4
        with api.database.session() as session:
            runnable = {j.id for j in jobstore.runnable_queued_jobs(session, utcnow())}
        assert runnable == set(body["job_ids"])
        again = api.client.post(SWEEPS, json=SWEEP)
        assert again.status_code == 200 and again.json()["new_experiments"] == 0


# --------------------------------------------------------------------------- progress


def test_progress_weights_jobs_by_their_expected_duration_and_gives_an_eta(api: Api) -> None:
    sweep = submit(api)
    first, second = sweep["experiments"][:2]
    now = utcnow()
    with api.database.session() as session:
        done = session.get(Experiment, first["id"])
        assert done is not None
        for job in done.jobs:  # train 30 s, calibration 10 s
            job.state, job.progress = JobState.SUCCEEDED, 1.0
            job.started_at = now - timedelta(seconds=30 if job.kind == "train" else 10)
            job.finished_at = now
        running = session.get(Experiment, second["id"])
        assert running is not None
        train = jobstore.train_job(running)
        train.state, train.progress, train.worker, train.device = (
            JobState.RUNNING, 0.5, "w1", "cpu",
        )  # fmt: skip
        train.started_at = train.heartbeat_at = now
        jobstore.worker_heartbeat(session, "w1", "host", api.queue, "cpu")
        session.commit()
    state = api.client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert state["status"] == "running"
    assert state["experiments"]["succeeded"] == 1 and state["experiments"]["running"] == 1
    assert state["jobs"] == {
        "queued": 5, "running": 1, "succeeded": 2, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    # Work: 4 x (30 + 10) = 160 s; done: 40 + 0.5 x 30 = 55 s; remaining 105 s, 1 worker.
    assert state["progress"] == pytest.approx(55 / 160, abs=1e-4)
    assert state["eta_s"] == pytest.approx(105.0, abs=0.1) and state["eta_estimated"] is False
    [job] = state["running"]
    assert job["configuration"] == second["configuration"] and job["seed"] == second["seed"]
    assert job["progress"] == 0.5 and job["device"] == "cpu" and job["worker"] == "w1"
    assert job["kind"] == "train" and job["heartbeat_age_s"] is not None


def test_an_eta_before_any_job_finished_is_estimated_from_the_running_train(api: Api) -> None:
    sweep = submit(api)
    now = utcnow()
    with api.database.session() as session:
        running = session.get(Experiment, sweep["experiments"][0]["id"])
        assert running is not None
        train = jobstore.train_job(running)
        train.state, train.progress, train.worker = JobState.RUNNING, 0.5, "w1"
        train.started_at = train.heartbeat_at = now - timedelta(seconds=60)
        session.commit()
    state = api.client.get(f"{SWEEPS}/{sweep['id']}").json()
    listed = api.client.get(SWEEPS).json()["data"][0]
    # Half a train job in 60 s: 120 s each, calibration guessed alike; 7.5 jobs left.
    for answer in (state, listed):
        assert answer["eta_s"] == pytest.approx(7.5 * 120, rel=0.01)
        assert answer["eta_estimated"] is True


def test_cancel_cancels_every_experiment_and_the_reconciler_reports_it(api: Api) -> None:
    sweep = submit(api)
    response = api.client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and len(body["cancelled_jobs"]) == 8
    assert body["experiments"]["cancelled"] == 4 and body["eta_s"] == 0.0
    assert api.client.post(f"{SWEEPS}/{sweep['id']}/cancel").json()["cancelled_jobs"] == []
    reconciler = Reconciler(api.settings, db=api.database)
    try:
        assert reconciler.run_once().reports == [sweep["id"]]  # no worker ran its last job
        assert reconciler.run_once().reports == []  # built once
    finally:
        reconciler.app.close()
    report = api.client.get(f"{SWEEPS}/{sweep['id']}").json()["report"]
    assert report["status"] == "done" and report["mlflow_run_id"]


def test_unknown_sweep_is_404(api: Api) -> None:
    for method, path in (
        ("GET", ""), ("GET", "/results"), ("GET", "/report"), ("GET", "/report/report.png"),
        ("POST", "/cancel"), ("POST", "/report"),
    ):  # fmt: skip
        response = api.client.request(method, f"{SWEEPS}/nope{path}")
        assert response.status_code == 404 and "nope" in response.json()["detail"]


# --------------------------------------------------------------------------- results, report


def metrics_for(sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Distinct made-up metrics per experiment; the last one has no attack metric."""
    metrics = {}
    for number, point in enumerate(sweep["experiments"]):
        values: dict[str, Any] = {
            "test_accuracy": 0.9 + 0.01 * number,
            "attack/pgd_linf/acc_eps0": 0.9 + 0.01 * number,
            "attack/pgd_linf/acc_eps0.1": 0.5 - 0.05 * number,
            "boundary/w20/tv_iso_mean": 1.0 + number,
            "geometry/curvature_mean": 3.0 * (number + 1),
            "train_seconds": 10.0 + number,
            "test_loss": 0.3,  # not a comparison column
        }
        if number == 3:
            del values["attack/pgd_linf/acc_eps0.1"]
        metrics[point["id"]] = values
    return metrics


def test_results_give_mean_std_and_n_per_configuration_as_json_and_csv(any_api: Api) -> None:
    sweep = submit(any_api)
    metrics = metrics_for(sweep)
    finish_all(any_api, sweep, metrics)
    results = any_api.client.get(f"{SWEEPS}/{sweep['id']}/results").json()
    assert results["sweep_id"] == sweep["id"]
    assert results["metrics"] == [
        "test_accuracy", "attack/pgd_linf/acc_eps0", "attack/pgd_linf/acc_eps0.1",
        "boundary/w20/tv_iso_mean", "geometry/curvature_mean", "train_seconds",
    ]  # fmt: skip
    assert [row["configuration"] for row in results["rows"]] == CONFIGURATIONS
    for row in results["rows"]:
        ids = [p["id"] for p in sweep["experiments"] if p["configuration"] == row["configuration"]]
        assert row["experiments"] == row["succeeded"] == 2
        for name in results["metrics"]:
            values = [metrics[i][name] for i in ids if name in metrics[i]]
            summary = row["metrics"][name]
            assert summary["n"] == len(values)
            assert summary["mean"] == pytest.approx(statistics.fmean(values))
            expected_std = statistics.stdev(values) if len(values) > 1 else 0.0
            assert summary["std"] == pytest.approx(expected_std)
    assert results["rows"][1]["metrics"]["attack/pgd_linf/acc_eps0.1"]["n"] == 1
    response = any_api.client.get(f"{SWEEPS}/{sweep['id']}/results", params={"format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert [line["configuration"] for line in lines] == CONFIGURATIONS
    for line, row in zip(lines, results["rows"], strict=True):
        for name, summary in row["metrics"].items():
            assert math.isclose(float(line[f"{name}_mean"]), summary["mean"])
            assert math.isclose(float(line[f"{name}_std"]), summary["std"])
            assert int(line[f"{name}_n"]) == summary["n"]


def test_results_compare_each_row_with_a_chosen_baseline(any_api: Api) -> None:
    """Seeds 0 and 1 in both rows: paired tests; the stored test predictions give the
    instability; ``baseline`` picks the row compared with, by name or index, else 422."""
    sweep = submit(any_api)
    accuracy = [0.90, 0.80, 0.95, 0.87]  # (none, 0), (none, 1), (l2, 0), (l2, 1)
    metrics = {
        point["id"]: {"seed": point["seed"], "test_accuracy": value}
        for point, value in zip(sweep["experiments"], accuracy, strict=True)
    }
    finish_all(any_api, sweep, metrics)
    truth = np.array([0, 1, 2, 3])
    predicted = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [3, 1, 2, 3]]
    with any_api.database.session() as session:
        for point, labels in zip(sweep["experiments"], predicted, strict=True):
            prediction = StoredPrediction(np.array(labels), labels_checksum(truth))
            jobstore.store_predictions(session, point["id"], prediction)
        session.commit()

    url = f"{SWEEPS}/{sweep['id']}/results"
    results = any_api.client.get(url).json()
    assert results["baseline"] == CONFIGURATIONS[0]
    assert results["metrics"][-4:] == list(INSTABILITY_METRICS)
    base, l2 = results["rows"]
    assert base["versus_baseline"] == {}
    assert base["metrics"]["instability/churn"] == {"mean": 0.0, "std": None, "n": 2}
    assert l2["metrics"]["instability/churn"]["mean"] == pytest.approx(0.25)
    assert l2["instability"] == {"members": 2, "left_out": {}}
    expected = stats.ttest_rel([0.95, 0.87], [0.90, 0.80])
    difference = l2["versus_baseline"]["test_accuracy"]
    assert difference["test"] == "paired" and difference["n"] == difference["n_baseline"] == 2
    assert difference["diff"] == pytest.approx(0.06)
    assert difference["p"] == pytest.approx(expected.pvalue)
    assert difference["p_holm"] == pytest.approx(expected.pvalue)
    assert difference["significant"] is False  # two seeds: a wide interval
    assert difference["ci_low"] < 0 < difference["ci_high"]

    for chosen in (CONFIGURATIONS[1], "1"):
        reverse = any_api.client.get(url, params={"baseline": chosen}).json()
        assert reverse["baseline"] == CONFIGURATIONS[1]
        assert reverse["rows"][1]["versus_baseline"] == {}
        assert reverse["rows"][0]["versus_baseline"]["test_accuracy"]["diff"] == pytest.approx(
            -0.06
        )
    response = any_api.client.get(url, params={"baseline": CONFIGURATIONS[1], "format": "csv"})
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert [line["baseline"] for line in lines] == [CONFIGURATIONS[1]] * 2
    assert lines[1]["test_accuracy_test"] == "baseline"
    assert lines[0]["test_accuracy_test"] == "paired"
    assert float(lines[0]["test_accuracy_diff"]) == pytest.approx(-0.06)

    for bad in ("dropout", "2", "-1"):
        response = any_api.client.get(url, params={"baseline": bad})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "baseline"] and error["type"] == "unknown_baseline"
        assert error["ctx"]["choices"] == CONFIGURATIONS
        assert CONFIGURATIONS[1] in error["msg"]
    csv_response = any_api.client.get(url, params={"baseline": "dropout", "format": "csv"})
    assert csv_response.status_code == 422


def test_the_report_is_logged_to_mlflow_and_served_as_png_and_html(any_api: Api) -> None:
    sweep = submit(any_api)
    url = f"{SWEEPS}/{sweep['id']}/report"
    assert any_api.client.post(url).status_code == 409  # jobs still queued
    missing = any_api.client.get(url)
    assert missing.status_code == 404 and "built when the sweep finishes" in missing.text
    finish_all(any_api, sweep, metrics_for(sweep))
    built = any_api.client.post(url)
    assert built.status_code == 200, built.text
    report = built.json()["report"]
    assert report["status"] == "done" and report["error"] is None
    assert report["files"] == ["report.png", "report.html", "results.csv", "results.json"]
    listing = any_api.client.get(url).json()["data"]
    assert sorted(item["path"] for item in listing) == sorted(report["files"])
    png = any_api.client.get(f"{url}/report.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    page = any_api.client.get(f"{url}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "data:image/png;base64," in page.text and 'src="http' not in page.text
    for configuration in CONFIGURATIONS:
        assert configuration in page.text
    assert "<table>" in page.text and "attack/pgd_linf/acc_eps0.1" in page.text
    assert any_api.client.get(f"{url}/nothing.txt").status_code == 404
    assert any_api.client.get(f"{url}/../secret").status_code in (400, 404)
    # A sweep-level run in the sweep's own MLflow experiment, tagged with the sweep.
    mlflow = MlflowClient(any_api.settings.tracking_uri)
    run = mlflow.get_run(report["mlflow_run_id"])
    state = any_api.client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert run.info.experiment_id == state["mlflow_experiment_id"]
    assert run.data.tags[SWEEP_TAG] == sweep["id"]
    assert run.data.tags[RUN_KIND_TAG] == "sweep-report"
    assert run.info.status == "FINISHED"
    # Building again makes a new run.
    again = any_api.client.post(url).json()["report"]
    assert again["status"] == "done" and again["mlflow_run_id"] != report["mlflow_run_id"]


def test_report_failures_are_recorded_with_the_reason(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = submit(api)
    finish_all(api, sweep, metrics_for(sweep))

    def broken(*_args: Any, **_kwargs: Any) -> Iterator[None]:
        raise RuntimeError("disk full")

    monkeypatch.setattr("service.reports.build_report", broken)
    built = api.client.post(f"{SWEEPS}/{sweep['id']}/report").json()["report"]
    assert built["status"] == "failed" and "disk full" in built["error"]
    response = api.client.get(f"{SWEEPS}/{sweep['id']}/report")
    assert response.status_code == 404 and "disk full" in response.json()["detail"]


def test_the_shared_experiment_appears_in_both_sweeps(api: Api) -> None:
    first = submit(api)
    wider_grid = {**GRID, "training.seed": [0, 1, 2]}
    wider = submit(api, {"name": "wider", "base": SPEC, "grid": wider_grid})
    assert wider["size"] == 6 and wider["new_experiments"] == 2
    shared = {p["id"] for p in first["experiments"]}
    assert shared <= {p["id"] for p in wider["experiments"]}
    listed = api.client.get("/api/v1/experiments", params={"sweep": wider["id"]}).json()
    assert listed["count"] == 6
    with api.database.session() as session:
        states = {job.state for job in session.query(Job)}
    assert states == {JobState.QUEUED}
