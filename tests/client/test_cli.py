"""The remote `regbench` commands against a server that answers with the contract's JSON
shapes (an ``httpx.MockTransport``), plus one real closed port for "server down"."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from client import cli
from client.remote import RegbenchClient
from client.tables import comparison_table, short_metric

SWEEP_ID = "3f2a9c1e5b7d4e0f8a6b2c4d6e8f0a1b"
EXPERIMENT_ID = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"

GRID_FILE = """\
name: demo
base:
  name: demo-digits-lenet
  dataset: {name: digits}
  model: {name: lenet}
  training: {epochs: 2, seed: 0}
grid:
  regularizers: [[], [{name: l2, weight: 0.0005}]]
  training.seed: [0, 1, 2]
"""

SUBMITTED = {
    "id": SWEEP_ID,
    "name": "demo",
    "created": True,
    "size": 6,
    "new_experiments": 6,
    "experiments": [
        {"id": f"e{n}", "configuration": config, "seed": seed, "created": True}
        for n, (config, seed) in enumerate(
            (c, s)
            for c in ("regularizers=none", "regularizers=l2(weight=0.0005)")
            for s in range(3)
        )
    ],
}

RUNNING_SWEEP: dict[str, Any] = {
    "id": SWEEP_ID,
    "name": "demo",
    "owner": "alice",
    "created_at": "2025-01-01T10:00:00Z",
    "size": 6,
    "status": "running",
    "experiments": {"queued": 2, "running": 1, "succeeded": 3, "failed": 0, "cancelled": 0},
    "jobs": {"queued": 4, "running": 1, "succeeded": 7, "failed": 0, "cancelled": 0},
    "progress": 0.625,
    "eta_s": 185.0,
    "started_at": "2025-01-01T10:00:05Z",
    "finished_at": None,
    "running": [
        {
            "job_id": "j1",
            "experiment_id": "e3",
            "configuration": "regularizers=l2(weight=0.0005)",
            "seed": 0,
            "kind": "train",
            "progress": 0.5,
            "message": "epoch 1/2",
            "device": "cuda:0",
            "worker": "gpu0@node1",
        }
    ],
    "report": {"status": "none", "mlflow_run_id": None, "error": None, "files": []},
    "mlflow_experiment_id": "1",
}


def finished_sweep(**experiments: int) -> dict[str, Any]:
    counts = {"queued": 0, "running": 0, "succeeded": 6, "failed": 0, "cancelled": 0}
    counts.update(experiments)
    return {
        **RUNNING_SWEEP,
        "status": "failed" if counts["failed"] else "succeeded",
        "experiments": counts,
        "jobs": {"queued": 0, "running": 0, "succeeded": 12, "failed": 0, "cancelled": 0},
        "progress": 1.0,
        "eta_s": None,
        "finished_at": "2025-01-01T10:12:45Z",
        "running": [],
        "report": {
            "status": "done",
            "mlflow_run_id": "r1",
            "error": None,
            "files": ["report.png", "report.html"],
        },
    }


RESULTS = {
    "sweep_id": SWEEP_ID,
    "metrics": [
        "test_accuracy",
        "attack/pgd_linf/acc_eps0.1",
        "boundary/w40/tv_iso_mean",
        "geometry/curvature_mean",
        "train_seconds",
    ],
    "rows": [
        {
            "configuration": "regularizers=none",
            "experiments": 3,
            "succeeded": 3,
            "metrics": {
                "test_accuracy": {"mean": 0.91234, "std": 0.00421, "n": 3},
                "attack/pgd_linf/acc_eps0.1": {"mean": 0.1, "std": 0.02, "n": 3},
                "boundary/w40/tv_iso_mean": {"mean": 1.5, "std": 0.25, "n": 3},
                "geometry/curvature_mean": {"mean": 3.25, "std": 0.5, "n": 3},
                "train_seconds": {"mean": 12.345, "std": 0.5, "n": 3},
            },
        },
        {
            "configuration": "regularizers=l2(weight=0.0005)",
            "experiments": 3,
            "succeeded": 2,
            "metrics": {
                "test_accuracy": {"mean": 0.93, "std": 0.001, "n": 2},
                "attack/pgd_linf/acc_eps0.1": {"mean": 0.2, "std": 0.01, "n": 1},
                "boundary/w40/tv_iso_mean": {"mean": None, "std": None, "n": 0},
                "geometry/curvature_mean": {"mean": 2.0, "std": 0.125, "n": 2},
                "train_seconds": {"mean": 13.0, "std": 1.0, "n": 2},
            },
        },
    ],
}

RESULTS_CSV = (
    "configuration,experiments,succeeded,test_accuracy_mean,test_accuracy_std,test_accuracy_n\r\n"
    "regularizers=none,3,3,0.91234,0.00421,3\r\n"
)

QUEUE = {
    "by_state": {"queued": 4, "running": 1, "succeeded": 7, "failed": 0, "cancelled": 0},
    "by_queue": {"gpu": {"queued": 4, "running": 1}},
    "running": [
        {
            "job_id": "j1",
            "experiment_id": "e3",
            "kind": "train",
            "queue": "gpu",
            "attempt": 1,
            "progress": 0.5,
            "message": "epoch 1/2",
            "device": "cuda:0",
            "worker": "gpu0@node1",
            "cancel_requested": False,
            "started_at": "2025-01-01T10:05:00Z",
            "heartbeat_at": "2025-01-01T10:06:00Z",
            "heartbeat_age_s": 3.2,
        }
    ],
    "workers": [
        {
            "name": "gpu0@node1",
            "hostname": "node1",
            "queues": ["gpu"],
            "device": "cuda:0",
            "slots": 2,
            "busy": [
                {
                    "slot": "gpu0@node1:4242",
                    "job_id": "j1",
                    "experiment_id": "e3a1b2c3d4",
                    "kind": "train",
                    "progress": 0.5,
                }
            ],
            "started_at": "2025-01-01T09:00:00Z",
            "heartbeat_at": "2025-01-01T10:06:00Z",
            "heartbeat_age_s": 2.0,
        }
    ],
}

ARTIFACTS = {
    "data": [
        {"path": "checkpoints", "size": None, "is_dir": True},
        {"path": "checkpoints/model.pt", "size": 2_500_000, "is_dir": False},
        {"path": "history.json", "size": 512, "is_dir": False},
    ],
    "count": 3,
}

Handler = Callable[[httpx.Request], httpx.Response]
Route = dict[str, Any] | list[Any] | str | bytes | Handler | httpx.Response


class FakeServer:
    """Routes ``"METHOD /path"`` (under /api/v1) to answers; records every request. A list of
    answers is served in turn (the last one repeats), so polling sees progress."""

    def __init__(self) -> None:
        self.routes: dict[str, Route | list[Route]] = {}
        self.requests: list[httpx.Request] = []

    def __setitem__(self, route: str, answer: Route | list[Route]) -> None:
        self.routes[route] = answer

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        answer = self.routes.get(f"{request.method} {path}")
        if answer is None:
            return httpx.Response(404, json={"detail": f"no route {request.method} {path}"})
        if isinstance(answer, list) and answer and isinstance(answer[0], dict | httpx.Response):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if callable(answer):
            return answer(request)
        if isinstance(answer, httpx.Response):
            return answer
        if isinstance(answer, bytes):
            return httpx.Response(200, content=answer)
        if isinstance(answer, str):
            return httpx.Response(200, text=answer, headers={"content-type": "text/csv"})
        return httpx.Response(200, json=copy.deepcopy(answer))

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path.removeprefix('/api/v1')}" for r in self.requests]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    transport = httpx.MockTransport(fake.handle)

    def make_client(server_url: str, token: str | None) -> RegbenchClient:
        return RegbenchClient(server_url, token, transport=transport)

    monkeypatch.setattr(cli, "make_client", make_client)
    monkeypatch.delenv("REGBENCH_TOKEN", raising=False)
    monkeypatch.delenv("REGBENCH_SERVER", raising=False)
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)  # no real waiting in --watch
    return fake


def regbench(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), env=env)


@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID_FILE)
    return path


# --------------------------------------------------------------------------- submit


def test_submit_grid_posts_one_sweep_and_prints_id_and_counts(
    server: FakeServer, grid_file: Path
) -> None:
    server["POST /sweeps"] = SUBMITTED

    result = regbench("submit", str(grid_file))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"sweep {SWEEP_ID}: 6 experiments, 6 new\n"
    request = server.requests[0]
    assert request.url.params["force"] == "false"
    body = json.loads(request.content)
    assert body["name"] == "demo" and body["base"]["model"] == {"name": "lenet"}
    assert body["grid"]["training.seed"] == [0, 1, 2]  # expanded by the server, not here


def test_submit_force_and_a_single_spec_go_to_experiments(
    server: FakeServer, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: one\ndataset: {name: digits}\nmodel: {name: lenet}\n")
    server["POST /experiments"] = {"id": EXPERIMENT_ID, "status": "queued", "created": False}

    result = regbench("submit", str(spec), "--force")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"experiment {EXPERIMENT_ID}: already submitted")
    assert server.requests[0].url.params["force"] == "true"


def test_submit_wait_shows_results_and_fails_when_an_experiment_failed(
    server: FakeServer, grid_file: Path
) -> None:
    server["POST /sweeps"] = SUBMITTED
    server[f"GET /sweeps/{SWEEP_ID}"] = [RUNNING_SWEEP, finished_sweep(succeeded=5, failed=1)]
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("submit", str(grid_file), "--wait")

    assert result.exit_code == 1
    assert f"sweep {SWEEP_ID}: 6 experiments, 6 new" in result.stdout
    assert "0.9123 ± 0.0042" in result.stdout
    assert "1 failed, 0 cancelled of 6 experiments" in result.stderr
    assert server.paths().count(f"GET /sweeps/{SWEEP_ID}") == 2


def test_submit_wait_succeeds_when_every_experiment_succeeded(
    server: FakeServer, grid_file: Path
) -> None:
    server["POST /sweeps"] = SUBMITTED
    server[f"GET /sweeps/{SWEEP_ID}"] = finished_sweep()
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("submit", str(grid_file), "--wait")

    assert result.exit_code == 0, result.output
    assert "regularizers=l2(weight=0.0005)" in result.stdout


def test_an_invalid_grid_prints_each_field_path_and_exits_2(
    server: FakeServer, grid_file: Path
) -> None:
    server["POST /sweeps"] = httpx.Response(
        422,
        json={
            "detail": [
                {
                    "loc": ["body", "grid", "regularizers", 1, 0, "name"],
                    "msg": "unknown regularizer 'l3'; valid: l1, l2, jacobian",
                    "type": "value_error",
                },
                {
                    "loc": ["body", "base", "training", "lr"],
                    "msg": "Input should be greater than 0",
                    "type": "greater_than",
                },
            ]
        },
    )

    result = regbench("submit", str(grid_file))

    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert "  grid.regularizers[1][0].name: unknown regularizer 'l3'; valid: l1, l2, jacobian" in (
        lines
    )
    assert "  base.training.lr: Input should be greater than 0" in lines
    assert result.stdout == ""


def test_a_grid_over_the_limit_prints_the_servers_detail(
    server: FakeServer, grid_file: Path
) -> None:
    detail = "the grid expands to 1200 experiments, over the limit of 1000 per sweep"
    server["POST /sweeps"] = httpx.Response(422, json={"detail": detail})

    result = regbench("submit", str(grid_file))

    assert result.exit_code == 2 and detail in result.stderr


def experiment(status: str, **fields: Any) -> dict[str, Any]:
    state = "running" if status == "running" else status
    job = {"kind": "train", "state": state, "progress": 0.5, "error": None}
    return {"id": EXPERIMENT_ID, "name": "one", "configuration": None, "status": status,
            "jobs": [job], "metrics": None, **fields}  # fmt: skip


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_submit_wait_of_one_spec(server: FakeServer, tmp_path: Path, outcome: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: one\ndataset: {name: digits}\nmodel: {name: lenet}\n")
    server["POST /experiments"] = {"id": EXPERIMENT_ID, "status": "queued", "created": True}
    done = experiment(outcome, metrics={"test_accuracy": 0.9512, "spec_hash": "abc"})
    if outcome == "failed":
        done["jobs"][0]["error"] = "CUDA out of memory"
    server[f"GET /experiments/{EXPERIMENT_ID}"] = [experiment("running"), done]

    result = regbench("submit", str(spec), "--wait")

    assert result.stdout.startswith(f"experiment {EXPERIMENT_ID}: new\n")
    if outcome == "succeeded":
        assert result.exit_code == 0, result.output
        assert cells(next(x for x in result.stdout.splitlines() if "test_accuracy" in x)) == [
            "test_accuracy",
            "0.9512",
        ]
    else:
        assert result.exit_code == 1
        assert "train: CUDA out of memory" in result.stderr


def test_invalid_yaml_exits_2_without_asking_the_server(server: FakeServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {name: [unclosed\n")

    result = regbench("submit", str(bad))

    assert result.exit_code == 2
    assert "not valid YAML" in result.stderr
    assert server.requests == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens


def test_server_down_says_how_to_start_one_and_exits_1(grid_file: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    result = regbench("submit", str(grid_file), "--server", url)

    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"cannot reach the regbench server at {url}" in message
    assert "start one with `regbench serve` or pass --server / REGBENCH_SERVER" in message


def test_a_password_in_the_server_url_is_never_printed(grid_file: Path) -> None:
    port = closed_port()
    url = f"http://me:Cl1ent-pa55word@127.0.0.1:{port}/?token=Cl1ent-t0ken"

    result = regbench("submit", str(grid_file), "--server", url)

    assert result.exit_code == 1
    output = result.stdout + result.stderr
    assert "Cl1ent-pa55word" not in output and "Cl1ent-t0ken" not in output
    assert f"me:***@127.0.0.1:{port}" in " ".join(output.split())


def test_a_server_error_shows_its_detail(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = httpx.Response(
        503, json={"detail": "the job store is unavailable; try again later"}
    )

    result = regbench("status", SWEEP_ID)

    assert result.exit_code == 1
    assert f"GET /sweeps/{SWEEP_ID} -> 503: the job store is unavailable" in result.stderr


# --------------------------------------------------------------------------- status


def test_status_of_one_sweep_shows_bar_counts_eta_report_and_running_jobs(
    server: FakeServer,
) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = RUNNING_SWEEP

    result = regbench("status", SWEEP_ID)

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "\x1b[" not in text  # captured, not a terminal: plain text
    assert f"sweep {SWEEP_ID}  demo  running" in text
    assert "███████████████░░░░░░░░░  62%  ETA 3m05s" in text
    assert "experiments (6): 3 succeeded · 1 running · 2 queued" in text
    assert "jobs: 7 succeeded · 1 running · 4 queued" in text
    assert "report: none" in text
    job_line = next(line for line in text.splitlines() if "epoch 1/2" in line)
    for cell in ("regularizers=l2(weight=0.0005)", " 0 ", "train", "████████████░░░░░░░░░░░░  50%"):
        assert cell in job_line
    assert "cuda:0" in job_line and "gpu0@node1" in job_line


def test_status_without_a_sweep_lists_sweeps_running_jobs_and_workers(
    server: FakeServer,
) -> None:
    server["GET /sweeps"] = {"data": [RUNNING_SWEEP, finished_sweep(succeeded=5, failed=1)]}
    server["GET /queue"] = QUEUE

    result = regbench("status")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    running, finished = [line for line in lines if SWEEP_ID in line]
    assert "running" in running and "62%" in running and "ETA 3m05s" in running
    assert "3 succeeded · 1 running · 2 queued (of 6)" in running
    assert "failed" in finished and "100%" in finished and "took 12m40s" in finished
    job = next(line for line in lines if line.startswith("│ e3"))
    assert "train" in job and "50%" in job and "cuda:0" in job and "gpu0@node1" in job
    assert "3s ago" in job
    worker = next(cells(line) for line in lines if cells(line)[0] == "gpu0@node1")
    # 1 of its 2 slots runs a job: the slot's process, the job's kind, experiment, progress
    assert worker == [
        "gpu0@node1",
        "node1",
        "gpu",
        "cuda:0",
        "1/2 busy",
        "4242: train e3a1b2c3 50%",
        "2s ago",
    ]
    assert server.requests[0].url.params["limit"] == "20"


def test_status_watch_refreshes_until_the_sweep_finished(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = [RUNNING_SWEEP, RUNNING_SWEEP, finished_sweep()]

    result = regbench("status", SWEEP_ID, "--watch", "--interval", "0")

    assert result.exit_code == 0, result.output
    assert server.paths().count(f"GET /sweeps/{SWEEP_ID}") == 3
    # Off a terminal only the final view is written, once.
    assert result.stdout.count(f"sweep {SWEEP_ID}") == 1
    assert "succeeded" in result.stdout and "report: done (report.png, report.html)" in (
        result.stdout
    )


# --------------------------------------------------------------------------- results


def test_results_table_has_short_titles_n_and_mean_std(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("results", SWEEP_ID)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "configuration" in line)
    for title in ("n", "test acc", "pgd_linf ε=0.1", "TV w40", "curvature", "train s"):
        assert f" {title} " in header
    none = cells(next(line for line in lines if "regularizers=none" in line))
    assert none == [
        "regularizers=none", "3", "0.9123 ± 0.0042", "0.1000 ± 0.0200", "1.5000 ± 0.2500",
        "3.2500 ± 0.5000", "12.35 ± 0.50",
    ]  # fmt: skip
    l2 = cells(next(line for line in lines if "regularizers=l2" in line))
    # One experiment of three did not succeed; a metric from a single run has no spread;
    # a metric no run has is a dash.
    assert l2[1:4] == ["2/3", "0.9300 ± 0.0010", "0.2000 (n=1)"] and l2[4] == "–"


def cells(line: str) -> list[str]:
    """A rich table row's cells: ``│ a │ b │`` -> ``["a", "b"]``."""
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def test_results_metrics_patterns_pick_columns(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("results", SWEEP_ID, "--metrics", "attack/*", "--metrics", "curvature")

    header = next(line for line in result.stdout.splitlines() if "configuration" in line)
    assert "pgd_linf ε=0.1" in header and "curvature" in header
    assert "test acc" not in header and "TV w40" not in header


def test_results_metrics_matching_nothing_lists_the_metrics(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("results", SWEEP_ID, "--metrics", "nothing*")

    assert result.exit_code == 2
    assert "no metric matches nothing*" in result.stderr and "geometry/curvature_mean" in (
        result.stderr
    )


def test_results_csv_is_the_servers_csv_verbatim(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS_CSV

    result = regbench("results", SWEEP_ID, "--csv")

    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == RESULTS_CSV.encode()
    assert server.requests[0].url.params["format"] == "csv"


def test_results_markdown_is_a_github_table(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("results", SWEEP_ID, "--markdown")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "| configuration | n | test acc | pgd_linf ε=0.1 | TV w40 | curvature | train s |\n"
        "| :-- | --: | --: | --: | --: | --: | --: |\n"
        "| regularizers=none | 3 | 0.9123 ± 0.0042 | 0.1000 ± 0.0200 | 1.5000 ± 0.2500"
        " | 3.2500 ± 0.5000 | 12.35 ± 0.50 |\n"
        "| regularizers=l2(weight=0.0005) | 2/3 | 0.9300 ± 0.0010 | 0.2000 (n=1) | –"
        " | 2.0000 ± 0.1250 | 13.00 ± 1.00 |\n"
    )


def test_results_csv_and_markdown_together_is_a_usage_error(server: FakeServer) -> None:
    result = regbench("results", SWEEP_ID, "--csv", "--markdown")

    assert result.exit_code == 2 and server.requests == []


def compared_results() -> dict[str, Any]:
    """RESULTS with the server's comparison against the first row, and instability."""
    answer = copy.deepcopy(RESULTS)
    answer["baseline"] = "regularizers=none"
    answer["metrics"] = [*answer["metrics"], "instability/churn"]
    none, l2 = answer["rows"]
    none["versus_baseline"] = {}
    none["metrics"]["instability/churn"] = {"mean": 0.0125, "std": None, "n": 3}
    l2["metrics"]["instability/churn"] = {"mean": 0.03, "std": None, "n": 2}
    difference = {"test": "welch", "n": 2, "n_baseline": 3, "note": None}
    l2["versus_baseline"] = {
        "test_accuracy": {
            **difference, "diff": 0.01766, "ci_low": 0.0101, "ci_high": 0.0252,
            "p": 0.004, "p_holm": 0.008, "significant": True,
        },
        "geometry/curvature_mean": {
            **difference, "diff": -1.25, "ci_low": -3.5, "ci_high": 1.0,
            "p": 0.2, "p_holm": 0.4, "significant": False,
        },
        "attack/pgd_linf/acc_eps0.1": {
            **difference, "diff": 0.1, "ci_low": None, "ci_high": None, "p": None,
            "p_holm": None, "significant": None, "test": None, "n": 1,
            "note": "n=1: no test possible",
        },
    }  # fmt: skip
    return answer


def test_results_against_a_baseline_mark_what_is_significant(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = compared_results()

    result = regbench("results", SWEEP_ID, "--baseline", "regularizers=none")

    assert result.exit_code == 0, result.output
    assert server.requests[0].url.params["baseline"] == "regularizers=none"
    lines = result.stdout.splitlines()
    assert any(" churn " in line for line in lines)  # the instability column
    title = next(i for i, line in enumerate(lines) if "vs baseline regularizers=none" in line)
    header = next(line for line in lines[title:] if "configuration" in line)
    assert "test acc" in header and "curvature" in header and "TV w40" not in header
    table = [line for line in lines[title:] if line.startswith("│")]
    base = cells(next(line for line in table if "regularizers=none" in line))
    assert base[1] == "baseline"
    l2 = next(line for line in table if "regularizers=l2" in line)
    assert "+0.0177 [+0.0101, +0.0252] p=0.008 *" in l2
    assert "-1.2500 [-3.5000, +1.0000] p=0.4 n.s." in l2
    assert "+0.1000 (n=1: no test possible)" in l2


def test_results_markdown_adds_the_comparison(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = compared_results()

    result = regbench("results", SWEEP_ID, "--markdown", "--metrics", "test_accuracy")

    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        "| configuration | test | test acc |\n"
        "| :-- | :-- | --: |\n"
        "| regularizers=none | baseline |  |\n"
        "| regularizers=l2(weight=0.0005) | welch | +0.0177 [+0.0101, +0.0252] p=0.008 * |\n"
    )


def test_results_with_an_unknown_baseline_show_the_servers_choices(server: FakeServer) -> None:
    error = {
        "loc": ["query", "baseline"],
        "msg": "no configuration 'dropout': choose one of 'regularizers=none', ...",
        "type": "unknown_baseline",
    }
    server[f"GET /sweeps/{SWEEP_ID}/results"] = httpx.Response(422, json={"detail": [error]})

    result = regbench("results", SWEEP_ID, "--baseline", "dropout")

    assert result.exit_code != 0
    assert "no configuration 'dropout': choose one of 'regularizers=none'" in result.stderr


def test_results_csv_passes_the_baseline(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS_CSV

    result = regbench("results", SWEEP_ID, "--csv", "--baseline", "1")

    assert result.exit_code == 0, result.output
    assert dict(server.requests[0].url.params) == {"format": "csv", "baseline": "1"}


def test_a_wide_table_is_not_truncated_off_a_terminal(server: FakeServer) -> None:
    wide = copy.deepcopy(RESULTS)
    names = [f"attack/pgd_linf/acc_eps0.{n}" for n in range(1, 10)]
    wide["metrics"] = names
    for row in wide["rows"]:
        row["metrics"] = {name: {"mean": 0.5, "std": 0.01, "n": 3} for name in names}
    server[f"GET /sweeps/{SWEEP_ID}/results"] = wide

    result = regbench("results", SWEEP_ID)

    header = next(line for line in result.stdout.splitlines() if "configuration" in line)
    assert all(f"pgd_linf ε=0.{n}" in header for n in range(1, 10))
    assert "…" not in result.stdout


def test_results_show_boundary_found_beside_the_distance(server: FakeServer) -> None:
    found = copy.deepcopy(RESULTS)
    names = ["boundary/w40/distance_mean", "boundary/w40/boundary_found"]
    found["metrics"] = ["test_accuracy", *names]
    for row in found["rows"]:
        row["metrics"]["boundary/w40/distance_mean"] = {"mean": 3.5, "std": 0.25, "n": 3}
        row["metrics"]["boundary/w40/boundary_found"] = {"mean": 0.625, "std": 0.125, "n": 3}
    server[f"GET /sweeps/{SWEEP_ID}/results"] = found

    result = regbench("results", SWEEP_ID)

    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "configuration" in line)
    cells = [cell.strip() for cell in header.split("┃")[1:-1]]  # rich's heavy header rule
    assert cells[-2:] == ["distance w40", "boundary found w40"], result.stdout
    line = next(line for line in result.stdout.splitlines() if "regularizers=none" in line)
    assert line.index("3.5000 ± 0.2500") < line.index("0.6250 ± 0.1250")


# --------------------------------------------------------------------------- artifacts, report


def test_artifacts_lists_paths_and_sizes(server: FakeServer) -> None:
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts"] = ARTIFACTS

    result = regbench("artifacts", EXPERIMENT_ID)

    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["checkpoints/"] in lines
    assert ["checkpoints/model.pt", "2.5", "MB"] in lines
    assert ["history.json", "512", "B"] in lines


def test_artifacts_downloads_a_file_and_a_directory(server: FakeServer, tmp_path: Path) -> None:
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts"] = ARTIFACTS
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts/history.json"] = b'{"epochs": 2}'
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts/checkpoints/model.pt"] = b"\x00weights"

    one = regbench("artifacts", EXPERIMENT_ID, "history.json", "-o", str(tmp_path / "one"))
    tree = regbench("artifacts", EXPERIMENT_ID, "checkpoints/", "-o", str(tmp_path / "tree"))

    assert one.exit_code == 0, one.output
    assert one.stdout == f"{tmp_path / 'one' / 'history.json'}\n"
    assert (tmp_path / "one" / "history.json").read_bytes() == b'{"epochs": 2}'
    assert tree.exit_code == 0, tree.output
    model = tmp_path / "tree" / "checkpoints" / "model.pt"
    assert tree.stdout == f"{model}\n"
    assert model.read_bytes() == b"\x00weights"
    assert not list((tmp_path / "tree" / "checkpoints").glob(".partial-*"))


def test_a_missing_artifact_shows_the_servers_404(server: FakeServer, tmp_path: Path) -> None:
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts"] = ARTIFACTS
    server[f"GET /experiments/{EXPERIMENT_ID}/artifacts/nope.txt"] = httpx.Response(
        404, json={"detail": "no artifact 'nope.txt' in this run"}
    )

    result = regbench("artifacts", EXPERIMENT_ID, "nope.txt", "-o", str(tmp_path))

    assert result.exit_code == 1 and "no artifact 'nope.txt'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_downloads_every_file(server: FakeServer, tmp_path: Path) -> None:
    files = [
        {"path": "report.png", "size": 4, "is_dir": False},
        {"path": "report.html", "size": 6, "is_dir": False},
    ]
    server[f"GET /sweeps/{SWEEP_ID}/report"] = {"data": files, "count": 2}
    server[f"GET /sweeps/{SWEEP_ID}/report/report.png"] = b"\x89PNG"
    server[f"GET /sweeps/{SWEEP_ID}/report/report.html"] = b"<html>"

    result = regbench("report", SWEEP_ID, "-o", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(tmp_path / "report.png"),
        str(tmp_path / "report.html"),
    ]
    assert (tmp_path / "report.png").read_bytes() == b"\x89PNG"


def test_a_server_path_outside_the_output_directory_is_refused(
    server: FakeServer, tmp_path: Path
) -> None:
    evil = {"path": "../escape.txt", "size": 1, "is_dir": False}
    server[f"GET /sweeps/{SWEEP_ID}/report"] = {"data": [evil], "count": 1}

    result = regbench("report", SWEEP_ID, "-o", str(tmp_path / "out"))

    assert result.exit_code == 1 and "refusing to write" in result.stderr
    assert not (tmp_path / "escape.txt").exists()


# --------------------------------------------------------------------------- cancel


def test_cancel_a_sweep(server: FakeServer) -> None:
    server[f"POST /sweeps/{SWEEP_ID}/cancel"] = {**RUNNING_SWEEP, "cancelled_jobs": ["j1", "j2"]}

    result = regbench("cancel", SWEEP_ID)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"sweep {SWEEP_ID}: 2 jobs cancelled\n"


def test_cancel_says_which_shared_experiments_it_left_alone(server: FakeServer) -> None:
    server[f"POST /sweeps/{SWEEP_ID}/cancel"] = {
        **RUNNING_SWEEP,
        "cancelled_jobs": ["j1"],
        "kept_experiments": ["e7", "e8"],
    }

    result = regbench("cancel", SWEEP_ID)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"sweep {SWEEP_ID}: 1 job cancelled",
        "2 experiment(s) shared with another user's work left alone (only their owner or "
        "an admin cancels them)",
    ]


def test_cancel_refused_for_another_users_work(server: FakeServer) -> None:
    detail = f"sweep {SWEEP_ID} belongs to 'ann': only its owner or an admin may change it"
    server[f"POST /sweeps/{SWEEP_ID}/cancel"] = httpx.Response(403, json={"detail": detail})

    result = regbench("cancel", SWEEP_ID)

    assert result.exit_code == 1
    assert "belongs to 'ann'" in result.stderr and "--token" not in result.stderr


def test_cancel_falls_back_from_sweep_to_experiment(server: FakeServer) -> None:
    server[f"POST /experiments/{EXPERIMENT_ID}/cancel"] = {
        "id": EXPERIMENT_ID,
        "status": "cancelled",
        "cancelled_jobs": ["j9"],
    }

    result = regbench("cancel", EXPERIMENT_ID)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"experiment {EXPERIMENT_ID}: 1 job cancelled\n"
    assert server.paths() == [
        f"POST /sweeps/{EXPERIMENT_ID}/cancel",
        f"POST /experiments/{EXPERIMENT_ID}/cancel",
    ]


def test_cancel_an_unknown_id(server: FakeServer) -> None:
    result = regbench("cancel", "nope")

    assert result.exit_code == 1
    assert "no sweep or experiment has the id 'nope'" in result.stderr


# --------------------------------------------------------------------------- auth, imports


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_token_is_sent_as_a_bearer_header(server: FakeServer, how: str) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = RUNNING_SWEEP
    if how == "option":
        result = regbench("status", SWEEP_ID, "--token", "s3cret")
    else:
        result = regbench("status", SWEEP_ID, env={"REGBENCH_TOKEN": "s3cret"})

    assert result.exit_code == 0, result.output
    assert server.requests[0].headers["Authorization"] == "Bearer s3cret"


def test_no_token_no_authorization_header(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = RUNNING_SWEEP

    regbench("status", SWEEP_ID)

    assert "Authorization" not in server.requests[0].headers


def test_the_server_comes_from_the_option_or_the_environment(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = RUNNING_SWEEP

    regbench("status", SWEEP_ID, env={"REGBENCH_SERVER": "http://cluster:9000/"})
    regbench("status", SWEEP_ID, "--server", "http://other:1234")

    assert [str(r.url) for r in server.requests] == [
        f"http://cluster:9000/api/v1/sweeps/{SWEEP_ID}",
        f"http://other:1234/api/v1/sweeps/{SWEEP_ID}",
    ]


def test_the_client_imports_no_science_database_or_tracking() -> None:
    code = (
        "import sys, client.cli, client.remote, client.tables, client.demo\n"
        "heavy = ('regcore', 'torch', 'mlflow', 'sqlalchemy', 'service', 'api', 'worker')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- local tables


def test_short_metric_titles() -> None:
    assert short_metric("attack/pgd_linf/acc_eps0.1") == "pgd_linf ε=0.1"
    assert short_metric("attack/fgsm_linf/acc_eps0.3_steps40") == "fgsm_linf ε=0.3 40 steps"
    assert short_metric("boundary/w40/tv_iso_mean") == "TV w40"
    assert short_metric("boundary/w40/distance_mean") == "distance w40"
    assert short_metric("boundary/w40/boundary_found") == "boundary found w40"
    assert short_metric("geometry/curvature_mean") == "curvature"
    assert short_metric("train_seconds") == "train s"
    assert short_metric("calibration/ece") == "ECE"


def test_comparison_table_of_local_runs_groups_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    runs = [
        ("regularizers=none", {"test_accuracy": 0.9, "train_seconds": 1.0}),
        ("regularizers=none", {"test_accuracy": 0.92, "train_seconds": 3.0}),
        ("regularizers=l2", {"test_accuracy": 0.95, "train_seconds": 2.0}),
    ]
    Console(width=200).print(comparison_table(runs))

    lines = capsys.readouterr().out.splitlines()
    none = next(line for line in lines if "regularizers=none" in line)
    assert "│ 2 │" in none and "0.9100 ± 0.0141" in none and "2.0000 ± 1.4142" in none
    l2 = next(line for line in lines if "regularizers=l2" in line)
    assert "│ 1 │" in l2 and "0.9500" in l2 and "±" not in l2


@pytest.fixture(autouse=True)
def _no_terminal_colours(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A developer's FORCE_COLOR would put ANSI codes into the captured text.
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    yield


# --------------------------------------------------------------------------- narrow terminals


def digits_grid_results() -> dict[str, Any]:
    """A realistic grid's answer: long configurations, many metrics (attacks, boundary,
    geometry, calibration, instability) and the comparison with the baseline."""
    names = [
        "test_accuracy", "test_loss", "val_accuracy", "train_seconds",
        "attack/pgd_linf/acc_eps0.1", "attack/pgd_linf/acc_eps0.3_steps40",
        "boundary/w40/tv_iso_mean", "boundary/w40/distance_mean", "boundary/w40/boundary_found",
        "geometry/curvature_mean", "calibration/ece", "instability/churn",
        "instability/label_entropy",
    ]  # fmt: skip
    configurations = [
        "regularizers=none",
        "regularizers=l2(weight=0.0005)",
        "regularizers=jacobian(weight=0.01,projections=1) training.lr=0.05",
        "regularizers=spectral_norm(coefficient=1.0) regularizers=dropout(p=0.25)",
    ]
    rows = []
    for number, configuration in enumerate(configurations):
        metrics = {name: {"mean": 0.9765 - number / 100, "std": 0.0123, "n": 3} for name in names}
        metrics["instability/churn"] = {"mean": 0.0125, "std": None, "n": 3}
        row: dict[str, Any] = {
            "configuration": configuration, "experiments": 3, "succeeded": 3, "metrics": metrics,
        }  # fmt: skip
        if number:
            row["versus_baseline"] = {
                name: {
                    "test": "welch", "n": 3, "n_baseline": 3, "note": None, "diff": -0.01766,
                    "ci_low": -0.0252, "ci_high": -0.0101, "p": 0.004, "p_holm": 0.008,
                    "significant": True,
                }
                for name in names[:4]
            }  # fmt: skip
            row["versus_baseline"]["test_loss"] |= {"p_holm": None, "note": "n=1: no test possible"}
        rows.append(row)
    return {
        "sweep_id": SWEEP_ID, "metrics": names, "rows": rows, "baseline": configurations[0],
    }  # fmt: skip


@pytest.mark.parametrize("width", [80, 120])
def test_results_fit_a_narrow_terminal_with_legends(server: FakeServer, width: int) -> None:
    answer = digits_grid_results()
    server[f"GET /sweeps/{SWEEP_ID}/results"] = answer

    result = regbench("results", SWEEP_ID, env={"COLUMNS": str(width)})

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= width, text
    assert "…" not in text, text
    flat = " ".join(text.split())  # a legend line may wrap
    for number, row in enumerate(answer["rows"], start=1):
        assert f"{number} {row['configuration']}" in flat, text  # the legend of the rows
    for name in answer["metrics"]:  # a column title, and its full name in the legend
        assert short_metric(name) in flat and name in flat, name
    assert "0.9765 ± 0.0123" in text and "-0.0177" in text and "p=0.008" in text
    assert "n=1: no test possible" in flat and "baseline" in text


def test_results_view_fits_the_width_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from client.tables import results_view

    # as `regbench run` prints its table (print_results), without a server
    Console(width=80).print(results_view(digits_grid_results(), width=80))

    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text


# --------------------------------------------------------------------------- feedback


def test_status_watch_waits_for_the_report(server: FakeServer) -> None:
    building = finished_sweep()
    building["report"] = {"status": "building", "mlflow_run_id": None, "error": None, "files": []}
    not_started = {**building, "report": {**building["report"], "status": "none"}}
    server[f"GET /sweeps/{SWEEP_ID}"] = [RUNNING_SWEEP, not_started, building, finished_sweep()]

    result = regbench("status", SWEEP_ID, "--watch", "--interval", "0")

    assert result.exit_code == 0, result.output
    assert server.paths().count(f"GET /sweeps/{SWEEP_ID}") == 4  # until the report is done
    assert "report: done (report.png, report.html)" in result.stdout


def test_status_watch_stops_when_no_report_is_started(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    never = finished_sweep()
    never["report"] = {"status": "none", "mlflow_run_id": None, "error": None, "files": []}
    server[f"GET /sweeps/{SWEEP_ID}"] = never
    monkeypatch.setattr(cli, "REPORT_START_GRACE_S", 0.0)

    result = regbench("status", SWEEP_ID, "--watch", "--interval", "0")

    assert result.exit_code == 0, result.output
    assert "report: none" in result.stdout


def test_submit_wait_off_a_terminal_prints_a_line_only_when_progress_changes(
    server: FakeServer, grid_file: Path
) -> None:
    server["POST /sweeps"] = SUBMITTED
    # Five polls, 2 s apart: only the ETA moves, then one more experiment succeeds.
    polls = [{**RUNNING_SWEEP, "eta_s": 185.0 - 2 * n} for n in range(5)]
    advanced = {**RUNNING_SWEEP, "progress": 0.75, "eta_s": 120.0}
    advanced["experiments"] = {**RUNNING_SWEEP["experiments"], "succeeded": 4, "queued": 1}
    server[f"GET /sweeps/{SWEEP_ID}"] = [*polls, advanced, finished_sweep()]
    server[f"GET /sweeps/{SWEEP_ID}/results"] = RESULTS

    result = regbench("submit", str(grid_file), "--wait")

    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"sweep {SWEEP_ID}:")]
    assert [line.split(":")[1].split()[0] for line in lines] == ["62%", "75%", "100%"], lines
    assert "ETA 3m05s" in lines[0] and "ETA 2m00s" in lines[1]


def test_an_estimated_eta_says_so(server: FakeServer) -> None:
    server[f"GET /sweeps/{SWEEP_ID}"] = {**RUNNING_SWEEP, "eta_estimated": True}

    result = regbench("status", SWEEP_ID)

    assert result.exit_code == 0, result.output
    assert "ETA ~3m05s (estimate)" in result.stdout
