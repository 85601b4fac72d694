"""Passwords in the configured URIs never come back: not from the open ``/healthz``, not
in a 503 body, not in any log record (every logger at DEBUG). The job store, broker and
tracking server are each unreachable (or refuse) at a URI with a password."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from service.db import Database
from service.settings import Settings
from tests.api.conftest import SPEC, Api, start_api

DB_PASSWORD = "Db-pa55word-AAA"
BROKER_PASSWORD = "Br0ker-pa55word-BBB"
TRACKING_PASSWORD = "Track1ng-pa55word-CCC"
TOKEN = "tok3n-in-the-query-DDD"
API_TOKEN = "the-api-t0ken-EEE"
SECRETS = (DB_PASSWORD, BROKER_PASSWORD, TRACKING_PASSWORD, TOKEN, API_TOKEN)
DEAD_PORT = 6399  # nothing listens there


@pytest.fixture
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def with_password(url: str, password: str) -> str:
    """The test database's URL with a password (PostgreSQL here trusts local users, so
    the password is sent and not checked: the store works)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def secret_settings(
    settings: Settings, postgres_url: str, *, tracking_server: bool
) -> dict[str, Any]:
    return {
        "database_url": with_password(postgres_url, DB_PASSWORD),
        "broker_url": f"redis://:{BROKER_PASSWORD}@127.0.0.1:{DEAD_PORT}/0",
        "mlflow_tracking_uri": (
            f"http://regbench:{TRACKING_PASSWORD}@127.0.0.1:{DEAD_PORT}/?token={TOKEN}"
            if tracking_server
            else None
        ),
        "broker_timeout_s": 0.5,
    }


@pytest.fixture(params=["tracking server", "local tracking store"])
def secret_api(
    request: pytest.FixtureRequest, embedded_settings: Settings, postgres_url: str
) -> Iterator[Api]:
    update = secret_settings(
        embedded_settings, postgres_url, tracking_server=request.param == "tracking server"
    )
    settings = embedded_settings.model_copy(update=update)
    yield from start_api(settings)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in: {text[:2000]}"


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the check would be empty"
    assert_no_secret(caplog.text)
    for record in caplog.records:
        assert_no_secret(record.getMessage())


def test_no_password_in_healthz_503_bodies_or_logs(
    every_logger_at_debug: pytest.LogCaptureFixture, secret_api: Api
) -> None:
    client = secret_api.client
    health = client.get("/healthz")
    assert health.status_code == 503
    components = health.json()["components"]
    assert components["database"]["status"] == "ok"
    assert components["broker"]["status"] == "unavailable"
    assert_no_secret(health.text)
    if secret_api.settings.tracking_is_server:
        assert components["tracking"]["status"] == "unavailable"
        # It still says where: the URI with its password masked.
        assert f"regbench:***@127.0.0.1:{DEAD_PORT}" in components["tracking"]["detail"]

    # The tracking server (when configured) or the broker refuses: a 503 body each.
    submitted = client.post("/api/v1/experiments", json=SPEC)
    assert submitted.status_code == 503, submitted.text
    assert_no_secret(submitted.text)
    swept = client.post("/api/v1/sweeps", json={"base": SPEC, "grid": {"training.seed": [0, 1]}})
    assert swept.status_code == 503, swept.text
    assert_no_secret(swept.text)

    # The job store goes away (its URL has the password too).
    dead_store = secret_api.settings.database_url.replace(":5432/", f":{DEAD_PORT}/")
    assert DB_PASSWORD in dead_store
    secret_api.app.state.database.dispose()
    secret_api.app.state.database = Database(dead_store)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["components"]["database"]["status"] == "unavailable"
    assert_no_secret(health.text)
    listed = client.get("/api/v1/experiments")
    assert listed.status_code == 503, listed.text
    assert_no_secret(listed.text)
    assert_no_secret_logged(every_logger_at_debug)


def test_no_api_token_in_logs_or_bodies(
    every_logger_at_debug: pytest.LogCaptureFixture, embedded_settings: Settings
) -> None:
    settings = embedded_settings.model_copy(update={"api_token": SecretStr(API_TOKEN)})
    for api in start_api(settings):
        refused = api.client.get("/api/v1/experiments", headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        listed = api.client.get("/api/v1/experiments", headers=headers)
        assert listed.status_code == 200
        assert_no_secret(refused.text + listed.text + api.client.get("/healthz").text)
    assert_no_secret_logged(every_logger_at_debug)
