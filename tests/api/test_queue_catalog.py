"""GET /queue and GET /catalog."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from service import jobstore
from service.tables import Worker, utcnow
from tests.api.conftest import Api


def test_queue_counts_jobs_and_shows_running_jobs_and_live_workers(api: Api) -> None:
    running, waiting = api.add_experiment(), api.add_experiment(analyses=[])
    train = jobstore.train_job(running)
    with api.database.session() as session:
        jobstore.worker_heartbeat(session, "gpu-node-1", "node1", "gpu,cpu", "cuda:0")
        jobstore.worker_heartbeat(session, "gone", "node2", "cpu", None)
        stale = utcnow() - timedelta(seconds=10 * api.settings.heartbeat_interval_s)
        session.execute(update(Worker).where(Worker.name == "gone").values(heartbeat_at=stale))
        jobstore.claim(session, train.id, worker="gpu-node-1", device="cuda:0",
                       stale_before=utcnow(), max_attempts=3)  # fmt: skip
        jobstore.heartbeat(session, train.id, "gpu-node-1", progress=0.5, message="epoch 2/4")
        session.commit()
    response = api.client.get("/api/v1/queue")
    assert response.status_code == 200
    queue = response.json()
    assert queue["by_state"] == {"running": 1, "queued": 2}  # waiting's train, running's analysis
    assert queue["by_queue"] == {api.queue: {"running": 1, "queued": 2}}
    [job] = queue["running"]
    assert (job["job_id"], job["experiment_id"], job["kind"]) == (train.id, running.id, "train")
    assert (job["progress"], job["message"]) == (0.5, "epoch 2/4")
    assert (job["device"], job["worker"]) == ("cuda:0", "gpu-node-1")
    assert 0 <= job["heartbeat_age_s"] < 60
    [worker] = queue["workers"]
    assert (worker["name"], worker["queues"], worker["device"]) == (
        "gpu-node-1", ["gpu", "cpu"], "cuda:0",
    )  # fmt: skip
    assert 0 <= worker["heartbeat_age_s"] < 60
    assert datetime.fromisoformat(worker["heartbeat_at"]).utcoffset() == timedelta(0)
    assert waiting.id not in {j["experiment_id"] for j in queue["running"]}


def test_queue_shows_each_workers_slots_and_what_runs_in_each(api: Api) -> None:
    first, second, third = (api.add_experiment(analyses=[]) for _ in range(3))
    with api.database.session() as session:
        jobstore.worker_heartbeat(session, "cpu@node1", "node1", "cpu", "cpu", slots=3)
        for experiment, slot in ((first, "cpu@node1:101"), (second, "cpu@node1:102")):
            jobstore.claim(session, jobstore.train_job(experiment).id, worker=slot,
                           device="cpu", stale_before=utcnow(), max_attempts=3)  # fmt: skip
        jobstore.claim(session, jobstore.train_job(third).id, worker="cpu@node12:7",
                       device="cpu", stale_before=utcnow(), max_attempts=3)  # fmt: skip
        session.commit()
    [worker] = api.client.get("/api/v1/queue").json()["workers"]
    assert worker["slots"] == 3
    busy = {job["slot"]: job["experiment_id"] for job in worker["busy"]}
    # node12's slot is another worker's, though its name starts the same way
    assert busy == {"cpu@node1:101": first.id, "cpu@node1:102": second.id}
    assert {job["kind"] for job in worker["busy"]} == {"train"}


def test_empty_queue(api: Api) -> None:
    assert api.client.get("/api/v1/queue").json() == {
        "by_state": {}, "by_queue": {}, "running": [], "workers": [],
    }  # fmt: skip


def test_catalog_lists_every_registry_with_params_schemas(api: Api) -> None:
    response = api.client.get("/api/v1/catalog")
    assert response.status_code == 200
    catalog = response.json()
    assert set(catalog) == {"datasets", "models", "regularizers", "analyses", "attacks"}
    names = {kind: {entry["name"] for entry in entries} for kind, entries in catalog.items()}
    assert {"digits", "mnist", "blobs"} <= names["datasets"]
    assert {"lenet", "mlp", "resnet18"} <= names["models"]
    assert {"jacobian", "l2", "spectral_norm"} <= names["regularizers"]
    analyses = {"boundary", "calibration", "geometry", "noise", "plots", "training_animation"}
    assert analyses <= names["analyses"]
    assert {"fgsm", "pgd"} <= names["attacks"]
    l2 = next(entry for entry in catalog["regularizers"] if entry["name"] == "l2")
    assert "weight" in l2["params"]["properties"] and l2["summary"]
