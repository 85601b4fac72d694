"""The OpenAPI document declares every answer an operation gives: the shared errors (401,
413, 503) on every route, and bodies that match what the app really sends. The fuzzing
of every operation is tests/api/test_fuzz.py; these are the cases it found, kept as
plain tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import SecretStr
from schemathesis.schemas import BaseSchema

from api.app import create_app
from service.settings import Settings
from tests.api.conftest import SPEC, Api, start_api
from tests.api.test_app import DEAD_TRACKING

DOCUMENT: dict[str, Any] = create_app(Settings()).openapi()
SCHEMA: BaseSchema = schemathesis.openapi.from_dict(DOCUMENT)
METHODS = {"get", "post", "put", "patch", "delete"}


def operations(prefix: str = "") -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS and path.startswith(prefix)
    ]


def declared(method: str, path: str) -> dict[str, Any]:
    return DOCUMENT["paths"][path][method.lower()]["responses"]


def conforms(method: str, path: str, response: httpx.Response) -> None:
    """The status is declared for the operation and the body matches its schema."""
    assert str(response.status_code) in declared(method, path), (method, path, response)
    SCHEMA[path][method].validate_response(response)


def test_every_api_operation_declares_401_413_and_503() -> None:
    for method, path in operations("/api/v1/"):
        responses = declared(method, path)
        for code in ("401", "413", "503"):
            assert code in responses, (method, path, code)
        assert "422" in responses, (method, path)  # every one takes the token header
    for method, path in (("GET", "/healthz"), ("GET", "/metrics")):
        assert {"413", "503"} <= set(declared(method, path))


def test_404_409_and_400_are_declared_where_they_occur() -> None:
    for method, path in operations("/api/v1/"):
        if "{" in path:
            assert "404" in declared(method, path), (method, path)
    assert "409" in declared("POST", "/api/v1/experiments/{experiment_id}/analyses")
    assert "409" in declared("POST", "/api/v1/sweeps/{sweep_id}/report")
    for path in (
        "/api/v1/experiments/{experiment_id}/artifacts/{path}",
        "/api/v1/sweeps/{sweep_id}/report/{path}",
    ):
        assert "400" in declared("GET", path)


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/api/v1/experiments", "/api/v1/experiments"),
        ("/api/v1/sweeps", "/api/v1/sweeps"),
        ("/api/v1/experiments/f00d/analyses", "/api/v1/experiments/{experiment_id}/analyses"),
    ],
)
def test_a_body_that_is_not_utf8_is_422(api: Api, path: str, operation: str) -> None:
    # FastAPI answers 400 for a body it cannot decode; bad input is a declared 422.
    response = api.client.post(
        path, content=b'{"name": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    conforms("POST", operation, response)


@pytest.fixture
def guarded_api(embedded_settings: Settings) -> Iterator[Api]:
    yield from start_api(embedded_settings.model_copy(update={"api_token": SecretStr("t0ken")}))


def test_401_is_the_declared_answer(guarded_api: Api) -> None:
    for method, path in (("GET", "/api/v1/queue"), ("POST", "/api/v1/experiments")):
        response = guarded_api.client.request(method, path, json=SPEC)
        assert response.status_code == 401
        conforms(method, path, response)


@pytest.fixture
def dead_tracking_api(embedded_settings: Settings) -> Iterator[Api]:
    settings = embedded_settings.model_copy(
        update={"mlflow_tracking_uri": DEAD_TRACKING, "broker_timeout_s": 0.5}
    )
    yield from start_api(settings)


def test_503_before_anything_is_recorded_is_a_declared_answer(dead_tracking_api: Api) -> None:
    # The submission's 503 used to declare only the not-enqueued body (with job_ids).
    response = dead_tracking_api.client.post("/api/v1/experiments", json=SPEC)
    assert response.status_code == 503 and response.headers["retry-after"]
    conforms("POST", "/api/v1/experiments", response)


def test_an_id_with_nul_is_not_found_on_both_stores(any_api: Api) -> None:
    # PostgreSQL text cannot hold NUL: the query failed (500) instead of finding nothing.
    client = any_api.client
    for path in ("/api/v1/experiments/a%00b", "/api/v1/sweeps/a%00b", "/api/v1/sweeps/%00/results"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
    assert client.post("/api/v1/experiments/%00/cancel").status_code == 404
    listed = client.get("/api/v1/experiments", params={"sweep": "a\x00b"})
    assert listed.status_code == 422  # no id has that form
    conforms("GET", "/api/v1/experiments", listed)
