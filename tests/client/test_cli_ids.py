"""Each command prints the ids (and MLflow links) the next command needs; `regbench retry`;
`--set` on `regbench submit`. Against the contract's JSON shapes (``FakeServer``)."""

# ruff: noqa: F811 (pytest fixtures imported from test_cli, then named as parameters)
from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.test_cli import (
    EXPERIMENT_ID,
    GRID_FILE,
    QUEUE,
    RESULTS,
    RUNNING_SWEEP,
    SUBMITTED,
    SWEEP_ID,
    FakeServer,
    finished_sweep,
    grid_file,  # noqa: F401 (a fixture)
    regbench,
    server,  # noqa: F401 (a fixture)
)

RUN_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
MLFLOW_URL = f"http://mlflow.example:5000/#/experiments/3/runs/{RUN_ID}"
EXPERIMENT: dict[str, Any] = {
    "id": EXPERIMENT_ID,
    "name": "one",
    "owner": "alice",
    "status": "running",
    "sweep_id": None,
    "configuration": None,
    "spec_hash": "h",
    "mlflow_run_id": RUN_ID,
    "mlflow_experiment_id": "3",
    "mlflow_url": MLFLOW_URL,
    "created_at": "2025-01-01T10:00:00Z",
    "seed": 0,
    "spec": {},
    "metrics": None,
    "jobs": [
        {"id": "j-train", "kind": "train", "state": "running", "progress": 0.5,
         "device": "cpu", "worker": "w1", "error": None},
        {"id": "j-cal", "kind": "calibration", "state": "queued", "progress": 0.0,
         "device": None, "worker": None, "error": None},
    ],
}  # fmt: skip
LISTED = {
    "data": [
        {**EXPERIMENT, "id": f"e{n}", "configuration": config, "seed": seed,
         "sweep_id": SWEEP_ID, "status": "succeeded", "mlflow_run_id": f"run{n}"}
        for n, (config, seed) in enumerate(
            (c, s) for c in ("regularizers=none", "regularizers=l2(weight=0.0005)")
            for s in range(3)
        )
    ],
    "count": 6,
}  # fmt: skip
NOT_FOUND = httpx.Response(404, json={"detail": "no such sweep"})


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: one\ndataset: {name: digits}\nmodel: {name: lenet}\n"
        "regularizers: [{name: l2, weight: 0.0005}]\ntraining: {epochs: 10}\n"
    )
    return path


# --------------------------------------------------------------------------- status


def test_status_follows_a_single_experiment_by_its_id(server: FakeServer) -> None:
    server[f"GET /sweeps/{EXPERIMENT_ID}"] = NOT_FOUND
    server[f"GET /experiments/{EXPERIMENT_ID}"] = EXPERIMENT

    result = regbench("status", EXPERIMENT_ID)

    assert result.exit_code == 0, result.output
    assert f"experiment {EXPERIMENT_ID}" in result.stdout and "running" in result.stdout
    assert "j-train" in result.stdout and "calibration" in result.stdout
    assert RUN_ID in result.stdout and MLFLOW_URL in result.stdout


def test_status_watch_of_an_experiment_ends_when_it_finished(server: FakeServer) -> None:
    done = {**EXPERIMENT, "status": "succeeded", "metrics": {"test_accuracy": 0.9}}
    server[f"GET /sweeps/{EXPERIMENT_ID}"] = NOT_FOUND
    server[f"GET /experiments/{EXPERIMENT_ID}"] = [EXPERIMENT, done]

    result = regbench("status", EXPERIMENT_ID, "--watch")

    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout and "0.9000" in result.stdout


def test_status_of_a_sweep_lists_experiment_ids_with_ids(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = RUNNING_SWEEP
    server["GET /experiments"] = LISTED

    plain = regbench("status", SWEEP_ID)
    listed = regbench("status", SWEEP_ID, "--ids")

    assert plain.exit_code == 0 and f"regbench status {SWEEP_ID} --ids" in plain.stdout
    assert "run0" not in plain.stdout  # the default view stays as it was
    assert listed.exit_code == 0, listed.output
    for n in range(6):
        assert f"e{n}" in listed.stdout and f"run{n}" in listed.stdout
    request = next(r for r in server.requests if r.url.path.endswith("/experiments"))
    assert request.url.params["sweep"] == SWEEP_ID


@pytest.mark.parametrize("width", [100, 120])
def test_ids_are_never_cut_at_a_terminals_width(server: FakeServer, width: int) -> None:
    """Real ids are 32 hex digits and the demo grid's configurations up to 41 characters:
    at 120 columns `status --ids` printed `2c15c7893fb341c183c61b38ebdc…`, the one thing
    the table is for. The configuration folds instead."""
    configurations = ["regularizers=confidence_penalty(beta=0.1)", "regularizers=none"]
    listed = copy.deepcopy(LISTED)
    for n, experiment in enumerate(listed["data"]):
        experiment |= {"id": f"{n:032x}", "mlflow_run_id": f"{n + 100:032x}"}
        experiment["configuration"] = configurations[n % 2]
    server[f"GET /sweeps/{SWEEP_ID}"] = finished_sweep()
    server["GET /experiments"] = listed

    result = regbench("status", SWEEP_ID, "--ids", env={"COLUMNS": str(width)})

    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= width, result.stdout
    assert "…" not in result.stdout, result.stdout
    for experiment in listed["data"]:
        assert experiment["id"] in result.stdout and experiment["mlflow_run_id"] in result.stdout


def test_status_without_a_sweep_never_cuts_sweep_ids(server: FakeServer) -> None:
    """The overview printed `329293a6de3b47f0abb6b1…` at 120 columns: the sweep id that
    `status SWEEP`, `results` and `retry` take."""
    sweeps = [
        {**finished_sweep(), "id": f"{n:032x}", "name": "demo-digits-lenet"} for n in range(3)
    ]
    server["GET /sweeps"] = {"data": sweeps}
    server["GET /queue"] = QUEUE

    result = regbench("status", env={"COLUMNS": "120"})

    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 120, result.stdout
    for sweep in sweeps:
        assert sweep["id"] in result.stdout, result.stdout


def test_status_of_a_sweep_folds_long_configurations_of_running_jobs(server: FakeServer) -> None:
    """At 120 columns the running jobs of the digits grid read `regularizers=l2(weight=0.0…`
    and each bar lost its end (`░░░░…`, its percentage on a line below)."""
    sweep = copy.deepcopy(RUNNING_SWEEP)
    sweep["running"][0] |= {
        "configuration": "regularizers=jacobian(weight=0.01,n_proj=1)",
        "message": "epoch 7/10: loss 0.05112, accuracy 1.000, val accuracy 0.993",
    }
    server[f"GET /sweeps/{SWEEP_ID}"] = sweep

    result = regbench("status", SWEEP_ID, env={"COLUMNS": "120"})

    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 120, result.stdout
    assert "…" not in result.stdout, result.stdout
    assert "░  50%" in result.stdout  # the whole bar, its percentage beside it
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    folded = "".join(row.split("│")[1].strip() for row in rows)
    assert folded == "regularizers=jacobian(weight=0.01,n_proj=1)", result.stdout


def test_results_ids_lists_each_configurations_experiments(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS
    server["GET /experiments"] = LISTED

    plain = regbench("results", SWEEP_ID)
    result = regbench("results", SWEEP_ID, "--ids")

    assert f"regbench results {SWEEP_ID} --ids" in plain.stderr and "run0" not in plain.stdout
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.search(r"\brun\d\b", line)]
    assert [line.split()[1] for line in lines] == [f"e{n}" for n in range(6)]  # grid order
    assert "regularizers=l2(weight=0.0005)" in lines[3] and "run3" in lines[3]


# --------------------------------------------------------------------------- submit


def test_submit_of_a_spec_says_how_to_follow_it(server: FakeServer, tmp_path: Path) -> None:
    server["POST /experiments"] = {**EXPERIMENT, "status": "queued", "created": True}

    result = regbench("submit", str(spec_file(tmp_path)))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"experiment {EXPERIMENT_ID}: new\n"
    assert f"regbench status {EXPERIMENT_ID} --watch" in result.stderr
    assert MLFLOW_URL in result.stderr


def test_submit_wait_of_a_spec_prints_its_mlflow_run(server: FakeServer, tmp_path: Path) -> None:
    server["POST /experiments"] = {**EXPERIMENT, "status": "queued", "created": True}
    done = {**EXPERIMENT, "status": "succeeded", "metrics": {"test_accuracy": 0.9}}
    server[f"GET /experiments/{EXPERIMENT_ID}"] = done

    result = regbench("submit", str(spec_file(tmp_path)), "--wait")

    assert result.exit_code == 0, result.output
    assert f"MLflow run  {RUN_ID}" in result.stdout and MLFLOW_URL in result.stdout


@pytest.mark.parametrize("state", ["cancelled", "failed"])
def test_resubmitting_a_cancelled_experiment_points_to_retry(
    server: FakeServer, tmp_path: Path, state: str
) -> None:
    server["POST /experiments"] = {**EXPERIMENT, "status": state, "created": False}

    result = regbench("submit", str(spec_file(tmp_path)))

    assert result.exit_code == 0, result.output
    assert f"already submitted, and {state}" in result.stdout
    assert f"regbench retry {EXPERIMENT_ID}" in result.stdout


def test_resubmitting_a_grid_with_failures_points_to_retry(
    server: FakeServer,
    grid_file: Path,
) -> None:
    server["POST /sweeps"] = {**SUBMITTED, "created": False, "new_experiments": 0}
    server[f"GET /sweeps/{SWEEP_ID}"] = finished_sweep(succeeded=4, failed=1, cancelled=1)

    result = regbench("submit", str(grid_file))

    assert result.exit_code == 0, result.output
    assert "1 failed, 1 cancelled of 6 experiments" in result.stderr
    assert f"`regbench retry {SWEEP_ID}`" in result.stderr


def test_submit_of_a_grid_says_where_the_experiment_ids_are(
    server: FakeServer,
    grid_file: Path,
) -> None:
    server["POST /sweeps"] = SUBMITTED

    result = regbench("submit", str(grid_file))

    assert f"regbench status {SWEEP_ID} --ids" in result.stderr


# --------------------------------------------------------------------------- retry


def test_retry_a_sweep(server: FakeServer) -> None:
    answer = {**finished_sweep(), "retried_jobs": ["j1", "j2", "j3"], "kept_experiments": []}
    server[f"POST /sweeps/{SWEEP_ID}/retry"] = answer

    result = regbench("retry", SWEEP_ID)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"sweep {SWEEP_ID}: 3 failed or cancelled jobs queued\n"
    assert f"regbench status {SWEEP_ID} --watch" in result.stderr


def test_retry_falls_back_to_an_experiment_and_says_when_nothing_failed(
    server: FakeServer,
) -> None:
    server[f"POST /sweeps/{EXPERIMENT_ID}/retry"] = NOT_FOUND
    server[f"POST /experiments/{EXPERIMENT_ID}/retry"] = {**EXPERIMENT, "retried_jobs": []}

    result = regbench("retry", EXPERIMENT_ID)

    assert result.exit_code == 0, result.output
    assert "nothing to retry" in result.stdout and f"experiment {EXPERIMENT_ID}" in result.stdout


def test_retry_of_another_users_sweep_shows_the_refusal(server: FakeServer) -> None:
    detail = "sweep x belongs to 'ann': only its owner or an admin may change it"
    server[f"POST /sweeps/{SWEEP_ID}/retry"] = httpx.Response(403, json={"detail": detail})

    result = regbench("retry", SWEEP_ID)

    assert result.exit_code == 1 and "belongs to 'ann'" in result.stderr


# --------------------------------------------------------------------------- --set


@pytest.fixture
def openapi(server: FakeServer) -> None:
    from api.app import create_app
    from service.settings import Settings

    server["GET /openapi.json"] = create_app(Settings(data_dir=tempfile.mkdtemp())).openapi()


def test_submit_set_changes_the_spec_sent(
    server: FakeServer,
    openapi: None,
    tmp_path: Path,
) -> None:
    server["POST /experiments"] = {**EXPERIMENT, "created": True}

    result = regbench(
        "submit", str(spec_file(tmp_path)),
        "--set", "training.epochs=2", "--set", "regularizers.0.weight=0.1",
        "--set", "training.lr=1e-3",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    body = json.loads(next(r for r in server.requests if r.method == "POST").content)
    assert body["training"] == {"epochs": 2, "lr": 0.001}
    assert body["regularizers"] == [{"name": "l2", "weight": 0.1}]


def test_submit_set_with_a_bad_path_names_the_valid_keys_and_sends_nothing(
    server: FakeServer,
    openapi: None,
    tmp_path: Path,
) -> None:
    result = regbench("submit", str(spec_file(tmp_path)), "--set", "training.epoch=2")

    assert result.exit_code == 2
    assert "--set training.epoch: training has no key 'epoch'" in result.stderr
    assert "valid keys there:" in result.stderr and "epochs" in result.stderr
    assert all(r.method == "GET" for r in server.requests)


def test_submit_set_on_a_grid_changes_its_base_not_its_axes(
    server: FakeServer,
    openapi: None,
    tmp_path: Path,
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID_FILE)
    server["POST /sweeps"] = copy.deepcopy(SUBMITTED)

    result = regbench("submit", str(path), "--set", "training.epochs=1")
    refused = regbench("submit", str(path), "--set", "training.seed=5")

    assert result.exit_code == 0, result.output
    body = json.loads(next(r for r in server.requests if r.method == "POST").content)
    assert body["base"]["training"] == {"epochs": 1, "seed": 0}
    assert body["grid"]["training.seed"] == [0, 1, 2]
    assert refused.exit_code == 2 and "'training.seed' is an axis of the grid" in refused.stderr
