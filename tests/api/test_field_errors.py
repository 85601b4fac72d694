"""A mistyped field in a spec or a grid path gets a 422 that lists the valid names and
the closest one, not pydantic's bare "Extra inputs are not permitted"."""

from __future__ import annotations

from tests.api.conftest import SPEC, Api


def test_a_mistyped_training_field_lists_the_valid_fields(api: Api) -> None:
    body = {**SPEC, "training": {**SPEC.get("training", {}), "epoch": 2}}
    response = api.client.post("/api/v1/experiments", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "training", "epoch"]
    assert "Extra inputs" not in error["msg"]
    assert "valid: epochs, batch_size, optimizer, lr" in error["msg"]
    assert error["msg"].endswith("did you mean 'epochs'?")


def test_a_mistyped_grid_path_lists_the_valid_fields(api: Api) -> None:
    body = {"base": SPEC, "grid": {"training.epoch": [1, 2]}}
    response = api.client.post("/api/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert {tuple(error["loc"][:3]) for error in errors} == {("body", "grid", "training.epoch")}
    for error in errors:
        assert "valid: epochs, batch_size" in error["msg"], error
        assert error["msg"].endswith("did you mean 'epochs'?")
    response = api.client.post("/api/v1/sweeps", json={"base": SPEC, "gird": {}})
    assert response.status_code == 422
    messages = [error["msg"] for error in response.json()["detail"]]
    assert "unknown field 'gird'; valid: name, base, grid; did you mean 'grid'?" in messages


def test_a_grid_index_into_a_missing_list_names_it(api: Api) -> None:
    base = {key: value for key, value in SPEC.items() if key != "regularizers"}
    body = {"base": base, "grid": {"regularizers.0.weight": [0.1, 0.2]}}
    response = api.client.post("/api/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "grid", "regularizers.0.weight", 0]  # the entry and value
    assert error["msg"].startswith("grid.regularizers.0.weight: the base spec has no list at")
    assert "no list at 'regularizers' to index with 0" in error["msg"]
