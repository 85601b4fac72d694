"""The optional API token: with REGBENCH_API_TOKEN set, /api/v1 needs it; health and
metrics stay open for probes and Prometheus. The client sends it from --token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from client import cli
from client.remote import RegbenchClient
from service.settings import Settings
from tests.api.conftest import SPEC, Api, start_api

TOKEN = "s3cret-token"


@pytest.fixture
def guarded_api(embedded_settings: Settings) -> Iterator[Api]:
    yield from start_api(embedded_settings.model_copy(update={"api_token": SecretStr(TOKEN)}))


def test_every_api_route_needs_the_token(guarded_api: Api) -> None:
    client = guarded_api.client
    for method, path in (
        ("GET", "/api/v1/experiments"), ("POST", "/api/v1/experiments"),
        ("GET", "/api/v1/sweeps"), ("GET", "/api/v1/queue"), ("GET", "/api/v1/catalog"),
    ):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = client.request(method, path, headers=headers, json=SPEC)
            assert response.status_code == 401, (method, path, headers)
            assert "API token" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/experiments", headers=authorized).status_code == 200
    assert client.post("/api/v1/experiments", json=SPEC, headers=authorized).status_code == 201
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_token_configured_means_open(api: Api) -> None:
    assert api.client.get("/api/v1/experiments").status_code == 200


def test_the_client_sends_its_token(guarded_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(server: str, token: str | None) -> RegbenchClient:
        # The app in this process: the TestClient's transport, the client's own headers.
        client = RegbenchClient(server, token=token, transport=guarded_api.client._transport)
        return client

    monkeypatch.setattr(cli, "make_client", make_client)
    runner = CliRunner()
    refused = runner.invoke(cli.main, ["status", "--server", "http://testserver"])
    assert refused.exit_code != 0 and "REGBENCH_TOKEN" in refused.output
    accepted = runner.invoke(
        cli.main, ["status", "--server", "http://testserver"], env={"REGBENCH_TOKEN": TOKEN}
    )
    assert accepted.exit_code == 0, accepted.output
