"""End-to-end fixtures: the worker tests' backends (real processes), plus the API."""

from tests.worker.conftest import (  # noqa: F401 (fixtures)
    _quiet_kombu,
    backend,
    cluster,
    embedded,
    mlflow_uri,
    redis_db,
)
