"""API tests: the app from ``create_app`` under ``TestClient``, against real services.

Two backends: ``embedded`` (SQLite job store, kombu's SQLite broker, local MLflow store,
all under a per-test data dir) and ``cluster`` (a fresh PostgreSQL database, Redis on
127.0.0.1, the same local MLflow store). Each test gets its own queue name, so its broker
messages are its own (Redis keys are removed afterwards). Every response is checked:
none may be a 500.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from api.app import create_app
from regcore.spec import ExperimentSpec
from service import jobstore
from service.db import Database
from service.schema import upgrade_database
from service.settings import Settings
from service.tables import Experiment
from tests.conftest import ensure_redis

REDIS_DB = 11
SPEC: dict[str, Any] = {
    "name": "digits-mlp",
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "calibration"}],
}


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, copied into each test's data dir (creating
    one from scratch costs a second of migrations)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def _data_dir(tmp_path: Path, mlflow_template: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = data_dir / "mlflow.db"
    with (
        closing(sqlite3.connect(mlflow_template)) as source,
        closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
    return data_dir


def _queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def embedded_settings(tmp_path: Path, mlflow_template: Path) -> Settings:
    return Settings(
        data_dir=_data_dir(tmp_path, mlflow_template),
        database_url=None,
        broker_url=None,
        mlflow_tracking_uri=None,
        mlflow_ui_url="http://mlflow.example:5000/",
        default_queue=_queue_name(),
        broker_timeout_s=1.0,
    )


@pytest.fixture
def cluster_settings(
    tmp_path: Path,
    mlflow_template: Path,
    postgres_url: str,
) -> Iterator[Settings]:
    ensure_redis()
    settings = Settings(
        data_dir=_data_dir(tmp_path, mlflow_template),
        database_url=postgres_url,
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        mlflow_tracking_uri=None,
        default_queue=_queue_name(),
        broker_timeout_s=1.0,
    )
    yield settings
    with redis.Redis.from_url(settings.celery_broker_url) as client:  # the queue and bindings
        keys = list(client.scan_iter(match=f"*{settings.default_queue}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(params=["embedded", "cluster"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


# --------------------------------------------------------------------------- the app


def no_server_errors(response: httpx.Response) -> None:
    assert response.status_code != 500, f"{response.request.url} answered 500"


@dataclass
class Api:
    client: TestClient
    settings: Settings
    app: FastAPI

    @property
    def database(self) -> Database:
        return self.app.state.database

    @property
    def queue(self) -> str:
        return self.settings.default_queue

    def add_experiment(self, **spec: Any) -> Experiment:
        """An experiment recorded through the job store (not enqueued)."""
        with self.database.session() as session:
            submission = jobstore.submit_experiment(
                session,
                ExperimentSpec.model_validate({**SPEC, **spec}),
                default_queue=self.queue,
                force=True,
            )
            session.commit()
            return submission.experiment

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/experiments/{experiment_id}")
        assert response.status_code == 200, response.text
        return response.json()


def start_api(settings: Settings) -> Iterator[Api]:
    upgrade_database(settings.job_store_url)
    app = create_app(settings)
    with TestClient(app) as client:
        client.event_hooks["response"].append(no_server_errors)
        yield Api(client, settings, app)


@pytest.fixture
def api(embedded_settings: Settings) -> Iterator[Api]:
    """The app on the embedded backend."""
    yield from start_api(embedded_settings)


@pytest.fixture
def any_api(any_settings: Settings) -> Iterator[Api]:
    """The app on each backend: embedded and cluster."""
    yield from start_api(any_settings)


# --------------------------------------------------------------------------- the broker


def broker_job_ids(settings: Settings, queue: str) -> list[str]:
    """The job ids waiting in ``queue`` on the broker itself (Redis list or kombu's
    SQLite tables), read without Celery."""
    url = settings.celery_broker_url
    if url.startswith("redis://"):
        with redis.Redis.from_url(url) as client:  # LPUSHed: newest first
            payloads = [raw.decode() for raw in reversed(client.lrange(queue, 0, -1))]
    else:
        with closing(sqlite3.connect(settings.data_dir / "broker.db")) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if "kombu_message" not in {row[0] for row in tables}:
                return []  # nothing was ever sent
            rows = connection.execute(
                "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = ? AND m.visible ORDER BY m.id",
                (queue,),
            ).fetchall()
        payloads = [row[0] for row in rows]
    return [_job_id(payload) for payload in payloads]


def _job_id(payload: str) -> str:
    message = json.loads(payload)
    assert message["headers"]["task"] == "regbench.run_job"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0]
