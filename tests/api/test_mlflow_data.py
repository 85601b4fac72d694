"""Metric histories and artifacts, read from the experiment's real MLflow run; artifact
paths confined to the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.tracking import ArtifactPathError, check_artifact_path
from service import jobstore
from service.tracking import MlflowTracker
from tests.api.conftest import Api

EXPERIMENTS = "/api/v1/experiments"
CHECKPOINT = bytes(range(256)) * 40  # not text: the bytes must come back unchanged


@pytest.fixture
def run(api: Api, tmp_path: Path) -> tuple[str, MlflowTracker]:
    """An experiment whose train job logged metrics and artifacts into its MLflow run,
    the way a worker does: MlflowTracker, then jobstore.set_mlflow_run."""
    experiment = api.add_experiment()
    settings = api.settings
    tracker = MlflowTracker(
        settings.tracking_uri,
        settings.mlflow_experiment,
        artifact_location=settings.default_artifact_location,
    )
    for epoch in (1, 2, 3):
        tracker.log_metrics({"train/loss": 1.0 / epoch, "val/accuracy": 0.5 + epoch / 10}, epoch)
    tracker.log_metrics({"diverged": float("nan")}, 1)
    files = tmp_path / "files"
    (files / "checkpoints").mkdir(parents=True)
    (files / "checkpoints" / "model.pt").write_bytes(CHECKPOINT)
    (files / "history.json").write_text(json.dumps({"epochs": 3}))
    tracker.log_artifact(files / "checkpoints" / "model.pt", "checkpoints")
    tracker.log_artifact(files / "history.json")
    with api.database.session() as session:
        jobstore.set_mlflow_run(session, jobstore.train_job(experiment).id, tracker.run_id)
        session.commit()
    return experiment.id, tracker


def test_metrics_are_the_logged_histories(api: Api, run: tuple[str, MlflowTracker]) -> None:
    experiment_id, _ = run
    response = api.client.get(f"{EXPERIMENTS}/{experiment_id}/metrics")
    assert response.status_code == 200
    metrics = response.json()
    assert set(metrics) == {"train/loss", "val/accuracy", "diverged"}
    loss = metrics["train/loss"]
    assert [(p["step"], p["value"]) for p in loss] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
    ]
    assert [p["value"] for p in metrics["val/accuracy"]] == pytest.approx([0.6, 0.7, 0.8])
    assert metrics["diverged"][0]["value"] is None  # NaN has no JSON number


def test_no_run_yet_means_no_metrics_and_no_artifacts(api: Api) -> None:
    experiment = api.add_experiment()
    assert api.client.get(f"{EXPERIMENTS}/{experiment.id}/metrics").json() == {}
    listing = api.client.get(f"{EXPERIMENTS}/{experiment.id}/artifacts").json()
    assert listing == {"data": [], "count": 0}
    missing = api.client.get(f"{EXPERIMENTS}/{experiment.id}/artifacts/history.json")
    assert missing.status_code == 404 and "no MLflow run" in missing.json()["detail"]


def test_artifacts_are_listed_and_downloaded_byte_for_byte(
    api: Api, run: tuple[str, MlflowTracker]
) -> None:
    experiment_id, _ = run
    listing = api.client.get(f"{EXPERIMENTS}/{experiment_id}/artifacts").json()
    assert listing["data"] == [
        {"path": "checkpoints", "size": None, "is_dir": True},
        {"path": "checkpoints/model.pt", "size": len(CHECKPOINT), "is_dir": False},
        {"path": "history.json", "size": len(json.dumps({"epochs": 3})), "is_dir": False},
    ]
    assert listing["count"] == 3
    download = api.client.get(f"{EXPERIMENTS}/{experiment_id}/artifacts/checkpoints/model.pt")
    assert download.status_code == 200 and download.content == CHECKPOINT
    assert 'filename="model.pt"' in download.headers["content-disposition"]
    history = api.client.get(f"{EXPERIMENTS}/{experiment_id}/artifacts/history.json")
    assert history.json() == {"epochs": 3}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("nothing.txt", 404),
        ("checkpoints/other.pt", 404),
        ("nowhere/model.pt", 404),
        ("checkpoints", 400),  # a directory
    ],
)
def test_missing_artifact_is_404_and_a_directory_400(
    api: Api, run: tuple[str, MlflowTracker], path: str, status: int
) -> None:
    experiment_id, _ = run
    response = api.client.get(f"{EXPERIMENTS}/{experiment_id}/artifacts/{path}")
    assert response.status_code == status, response.text
    assert path in response.json()["detail"]


TRAVERSALS = [
    "../x",
    "../../../../etc/passwd",
    "checkpoints/../../x",
    "checkpoints/../history.json",
    "./history.json",
    "/etc/passwd",
    "..\\x",
    "checkpoints\\model.pt",
    "checkpoints//model.pt",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_paths_are_400_as_sent_on_the_wire(
    api: Api, run: tuple[str, MlflowTracker], raw: str
) -> None:
    """The raw path as a client such as ``curl --path-as-is`` sends it (httpx would
    remove dot segments before sending, so the request is driven through ASGI)."""
    experiment_id, _ = run
    status, body = asgi_get(api, f"{EXPERIMENTS}/{experiment_id}/artifacts/{raw}")
    assert status == 400, body
    assert "artifact path" in body["detail"]


@pytest.mark.parametrize(
    "encoded", ["%2e%2e/x", "%2E%2E%2Fx", "checkpoints/%2e%2e/%2e%2e/x", "..%5Cx", "%2Fetc/passwd"]
)
def test_percent_encoded_traversals_are_400(
    api: Api, run: tuple[str, MlflowTracker], encoded: str
) -> None:
    experiment_id, _ = run
    response = api.client.get(f"{EXPERIMENTS}/{experiment_id}/artifacts/{encoded}")
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("path", [*TRAVERSALS, "", "/", "a\x00b"])
def test_check_artifact_path_refuses(path: str) -> None:
    with pytest.raises(ArtifactPathError):
        check_artifact_path(path)


@pytest.mark.parametrize(
    ("path", "clean"),
    [("model.pt", "model.pt"), ("plots/a b.png", "plots/a b.png"), ("plots/", "plots")],
)
def test_check_artifact_path_keeps_plain_relative_paths(path: str, clean: str) -> None:
    assert check_artifact_path(path) == clean


def asgi_get(api: Api, path: str) -> tuple[int, Any]:
    """GET ``path`` exactly as given (no client-side normalization), on the client's loop."""
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await api.app(scope, receive, send)

    portal = api.client.portal
    assert portal is not None
    portal.call(call)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)
