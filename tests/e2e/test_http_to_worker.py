"""A spec POSTed over HTTP is trained by a real Celery worker and read back over HTTP,
on PostgreSQL + Redis and on the embedded default."""

from __future__ import annotations

import socket
import sys
from typing import Any

import httpx

from tests.worker.conftest import Backend

SPEC: dict[str, Any] = {
    "name": "e2e",
    "dataset": {"name": "digits", "size": 28, "train_size": 200, "test_size": 100},
    "model": {"name": "lenet"},
    "training": {"epochs": 3, "batch_size": 50, "lr": 0.05, "device": "cpu"},
    "analyses": [{"kind": "plots", "embedding_samples": 40, "tsne": False}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(backend: Backend) -> httpx.Client:
    port = free_port()
    backend.processes.start(
        "api",
        [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port)],
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def healthy() -> bool | None:
        try:
            return client.get("/healthz").status_code == 200 or None
        except httpx.TransportError:
            return None

    backend.wait(healthy, 60, "the API to answer /healthz")
    return client


def test_posted_spec_is_trained_and_everything_comes_back_over_http(backend: Backend) -> None:
    api = start_api(backend)
    backend.start_worker()
    created = api.post("/api/v1/experiments", json=SPEC)
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    assert api.post("/api/v1/experiments", json=SPEC).json()["id"] == experiment_id

    seen: list[str] = []

    def finished() -> dict[str, Any] | None:
        body = api.get(f"/api/v1/experiments/{experiment_id}").json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    body = backend.wait(finished, 180, "the experiment to finish")
    assert body["status"] == "succeeded", body
    assert seen[0] == "queued" and "running" in seen and seen[-1] == "succeeded"
    assert body["metrics"]["test_accuracy"] > 0.5
    run_id = body["mlflow_run_id"]
    assert run_id

    histories = api.get(f"/api/v1/experiments/{experiment_id}/metrics").json()
    assert [point["step"] for point in histories["val/accuracy"]] == [1, 2, 3]

    listing = api.get(f"/api/v1/experiments/{experiment_id}/artifacts").json()["data"]
    paths = {item["path"] for item in listing}
    assert "checkpoints/model.pt" in paths
    assert "analyses/plots/boundary_planes.png" in paths
    png = api.get(f"/api/v1/experiments/{experiment_id}/artifacts/analyses/plots/weights.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = api.get(f"/api/v1/experiments/{experiment_id}/artifacts/checkpoints/model.pt")
    assert checkpoint.status_code == 200 and len(checkpoint.content) > 1000
    assert api.get(f"/api/v1/experiments/{experiment_id}/artifacts/../secret").status_code in (
        400,
        404,
    )

    mlflow = backend.mlflow()
    assert "val/accuracy" in mlflow.get_run(run_id).data.metrics
    plots = {a.path for a in mlflow.list_artifacts(run_id, "analyses/plots")}
    assert "analyses/plots/weights.png" in plots
    runs = mlflow.search_runs(
        [mlflow.get_run(run_id).info.experiment_id], "tags.regbench.job_id != ''"
    )
    assert len(runs) == 1  # one run for the experiment, analyses included
