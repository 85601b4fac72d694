"""Names over HTTP: an experiment's or sweep's name outside the safe set is a 422 naming
the field, and nothing is recorded; a sweep's artifacts go under a directory made from
the sweep's hash, never from its name (tests/worker/test_paths.py runs the jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from mlflow.tracking import MlflowClient

from regcore.spec import NAME_MAX_LENGTH
from tests.api.conftest import SPEC, Api

EXPERIMENTS = "/api/v1/experiments"
SWEEPS = "/api/v1/sweeps"
GRID = {"training.seed": [0, 1]}
UNSAFE = [
    "x/../../../../tmp/somewhere",
    "../../outside",
    "a/b",
    "back\\slash",
    "nul\x00",
    "line\nbreak",
    "trailing\n",
    "..",
    "a" * (NAME_MAX_LENGTH + 1),
]


def assert_refused(api: Api, response: Any, loc: list[Any]) -> None:
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [error["loc"] for error in errors] == [loc], errors
    # (NUL is refused before the name's own check, by the body check of api.bodies)
    assert "letters, digits" in errors[0]["msg"] or "NUL" in errors[0]["msg"]
    # Nothing was recorded.
    assert api.client.get(EXPERIMENTS).json()["count"] == 0
    assert api.client.get(SWEEPS).json()["count"] == 0


@pytest.mark.parametrize("name", UNSAFE)
def test_an_unsafe_experiment_name_is_422_naming_the_field(api: Api, name: str) -> None:
    response = api.client.post(EXPERIMENTS, json={**SPEC, "name": name})
    assert_refused(api, response, ["body", "name"])


@pytest.mark.parametrize("name", UNSAFE)
def test_an_unsafe_sweep_name_is_422_naming_the_field(api: Api, name: str) -> None:
    response = api.client.post(SWEEPS, json={"name": name, "base": SPEC, "grid": GRID})
    assert_refused(api, response, ["body", "name"])
    base = {**SPEC, "name": name}
    for grid in (GRID, {**GRID, "name": ["a", "b"]}):  # the grid may rename every point
        response = api.client.post(SWEEPS, json={"base": base, "grid": grid})
        assert_refused(api, response, ["body", "base", "name"])
    response = api.client.post(SWEEPS, json={"base": SPEC, "grid": {"name": ["ok", name]}})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "grid", "name", 1]]


def test_a_sweeps_artifacts_live_under_its_hash_not_its_name(any_api: Api) -> None:
    response = any_api.client.post(
        SWEEPS, json={"name": "a (b)+c=d, e@f.g_h-i", "base": SPEC, "grid": GRID}
    )
    assert response.status_code == 201, response.text
    sweep = any_api.client.get(f"{SWEEPS}/{response.json()['id']}").json()
    client = MlflowClient(any_api.settings.tracking_uri)
    experiment = client.get_experiment(sweep["mlflow_experiment_id"])
    assert experiment.name.startswith("sweep a (b)+c=d, e@f.g_h-i ")  # readable in the UI
    location = Path(url2pathname(urlparse(experiment.artifact_location).path))
    assert location.parent == any_api.settings.artifact_root
    assert location.name.startswith("sweep-") and len(location.name) == len("sweep-") + 64
