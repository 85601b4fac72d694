"""The app as a whole: start-up checks, health, broker outages, body limit, error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import MAX_BODY_BYTES, create_app
from service import jobstore
from service.schema import SchemaOutdatedError, upgrade_database
from service.settings import Settings
from service.tables import utcnow
from tests.api.conftest import SPEC, Api, start_api

DEAD_BROKER = "redis://127.0.0.1:6399/0"  # nothing listens there
DEAD_TRACKING = "http://127.0.0.1:6399"


def test_healthz_is_200_when_everything_answers(any_api: Api) -> None:
    response = any_api.client.get("/healthz")
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["status"] == "ok"
    assert {name: c["status"] for name, c in health["components"].items()} == {
        "database": "ok", "broker": "ok", "tracking": "ok",
    }  # fmt: skip


@pytest.fixture
def dead_broker_api(embedded_settings: Settings) -> Iterator[Api]:
    settings = embedded_settings.model_copy(
        update={"broker_url": DEAD_BROKER, "broker_timeout_s": 0.5}
    )
    yield from start_api(settings)


def test_healthz_is_503_naming_the_broker_when_it_is_down(dead_broker_api: Api) -> None:
    response = dead_broker_api.client.get("/healthz")
    assert response.status_code == 503
    components = response.json()["components"]
    assert components["broker"]["status"] == "unavailable"
    assert "6399" in components["broker"]["detail"]
    assert components["database"]["status"] == components["tracking"]["status"] == "ok"
    assert components["broker"]["seconds"] < 5


def test_submit_with_the_broker_down_is_503_and_the_job_stays_queued(
    dead_broker_api: Api,
) -> None:
    api = dead_broker_api
    response = api.client.post("/api/v1/experiments", json=SPEC)
    assert response.status_code == 503
    body = response.json()
    assert body["experiment_id"] in body["detail"] and "reconciler" in body["detail"]
    assert response.headers["retry-after"]
    experiment = api.experiment(body["experiment_id"])  # recorded and committed
    train = next(job for job in experiment["jobs"] if job["kind"] == "train")
    assert body["job_ids"] == [train["id"]]
    assert experiment["status"] == "queued" and train["enqueued_at"] is None
    with api.database.session() as session:  # what the reconciler will send
        assert [j.id for j in jobstore.runnable_queued_jobs(session, utcnow())] == [train["id"]]
    # Submitting again finds it (nothing is lost or doubled).
    again = api.client.post("/api/v1/experiments", json=SPEC)
    assert again.status_code == 200 and again.json()["id"] == body["experiment_id"]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_refuses_to_start_without_the_schema(
    request: pytest.FixtureRequest, embedded_settings: Settings, tmp_path: Path, store: str
) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    url = empty if store == "sqlite" else request.getfixturevalue("postgres_url")
    settings = embedded_settings.model_copy(update={"database_url": url})
    with (
        pytest.raises(SchemaOutdatedError, match="regbench db upgrade"),
        TestClient(create_app(settings)),
    ):
        pass  # pragma: no cover


def test_body_over_the_limit_is_413(api: Api) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    declared = api.client.post(
        "/api/v1/experiments", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no content-length: counted while streaming
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    streamed = api.client.post(
        "/api/v1/experiments", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
    assert api.client.post("/api/v1/experiments", json=SPEC).status_code == 201


def test_unexpected_errors_are_a_short_json_500(embedded_settings: Settings) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals")

    upgrade_database(embedded_settings.job_store_url)
    app = create_app(embedded_settings)
    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error (RuntimeError); the server log has the details"
    }


def test_openapi_and_docs(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "/api/v1/experiments" in schema["paths"] and "/healthz" in schema["paths"]
    assert api.client.get("/docs").status_code == 200


@pytest.fixture
def dead_tracking_api(embedded_settings: Settings) -> Iterator[Api]:
    settings = embedded_settings.model_copy(
        update={"mlflow_tracking_uri": DEAD_TRACKING, "broker_timeout_s": 0.5}
    )
    yield from start_api(settings)


def test_tracking_server_down_is_503_and_records_nothing(dead_tracking_api: Api) -> None:
    api = dead_tracking_api
    health = api.client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["components"]["tracking"]["status"] == "unavailable"
    response = api.client.post("/api/v1/experiments", json=SPEC)
    assert response.status_code == 503 and "nothing was recorded" in response.json()["detail"]
    assert api.client.get("/api/v1/experiments").json()["count"] == 0
