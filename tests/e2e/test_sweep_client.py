"""The researcher's loop on a live stack (PostgreSQL + Redis, the API under uvicorn, a
Celery worker): ``regbench submit grids/digits.yaml``, watch it with ``regbench status``,
read ``regbench results``, fetch the sweep report. The results are checked against the
individual experiments' own metrics, read over HTTP."""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from client.cli import main
from tests.e2e.test_http_to_worker import start_api
from tests.worker.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "grids" / "digits.yaml"
SWEEP_LIMIT = 10
FINISHED = {"succeeded", "failed", "cancelled"}
COLUMN = "test_accuracy"


def regbench(server: str, *args: str) -> Result:
    """One ``regbench`` command, its stdout and stderr captured (no terminal: plain text)."""
    return CliRunner().invoke(main, [*args, "--server", server], catch_exceptions=False)


def sweep_line(result: Result) -> tuple[str, int, int]:
    match = re.fullmatch(r"sweep (\w+): (\d+) experiments, (\d+) new", result.stdout.strip())
    assert match, result.output
    return match[1], int(match[2]), int(match[3])


def test_the_digits_grid_through_the_client_on_a_live_stack(
    cluster: Backend, tmp_path: Path
) -> None:
    backend = cluster
    backend.processes.env["REGBENCH_MAX_SWEEP_SIZE"] = str(SWEEP_LIMIT)
    api = start_api(backend)
    server = str(api.base_url)
    backend.start_worker()

    submitted = regbench(server, "submit", str(DIGITS))
    assert submitted.exit_code == 0, submitted.output
    sweep_id, size, new = sweep_line(submitted)
    assert (size, new) == (6, 6)  # 3 regularizer settings x 2 seeds

    # Resubmitting creates nothing; a grid past the limit is refused, naming the limit.
    again = regbench(server, "submit", str(DIGITS))
    assert again.exit_code == 0 and sweep_line(again) == (sweep_id, 6, 0)
    bigger = yaml.safe_load(DIGITS.read_text())
    bigger["grid"]["training.seed"] = list(range(6))  # 18 experiments
    too_big = tmp_path / "too-big.yaml"
    too_big.write_text(yaml.safe_dump(bigger))
    refused = regbench(server, "submit", str(too_big))
    assert refused.exit_code == 2
    assert f"over the limit of {SWEEP_LIMIT}" in refused.output
    assert "18 experiments" in refused.output
    assert api.get("/api/v1/sweeps").json()["count"] == 1
    assert api.get("/api/v1/experiments").json()["count"] == 6

    # Watch it: `regbench status SWEEP` while it runs shows the running job's bar.
    seen_running: list[str] = []

    def finished() -> dict[str, Any] | None:
        sweep = api.get(f"/api/v1/sweeps/{sweep_id}").json()
        if sweep["running"] and not seen_running:
            view = regbench(server, "status", sweep_id)
            assert view.exit_code == 0, view.output
            seen_running.append(view.stdout)
        return sweep if sweep["status"] in FINISHED else None

    sweep = backend.wait(finished, 900, "the digits sweep to finish", every=1.0)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["experiments"]["succeeded"] == 6 and sweep["jobs"]["succeeded"] == 24
    assert sweep["progress"] == 1.0 and sweep["eta_s"] == 0.0
    assert seen_running, "the sweep was never seen running"
    running_view = seen_running[0]
    assert sweep_id in running_view and "running" in running_view
    assert re.search(r"\d+%", running_view)  # a progress bar with its percentage

    # The results, against each experiment's own metrics read over HTTP.
    experiments = api.get("/api/v1/experiments", params={"sweep": sweep_id}).json()["data"]
    assert len(experiments) == 6
    by_configuration: dict[str, list[dict[str, Any]]] = {}
    for summary in experiments:
        metrics = api.get(f"/api/v1/experiments/{summary['id']}").json()["metrics"]
        by_configuration.setdefault(summary["configuration"], []).append(metrics)
    results = api.get(f"/api/v1/sweeps/{sweep_id}/results").json()
    expected_labels = [
        "regularizers=none",
        "regularizers=l2(weight=0.00025)",
        "regularizers=jacobian(weight=0.01,n_proj=1)",
    ]
    assert [row["configuration"] for row in results["rows"]] == expected_labels
    for metric in (
        "test_accuracy",
        "attack/pgd_linf/acc_eps0",
        "attack/pgd_linf/acc_eps0.05",
        "attack/pgd_linf/acc_eps0.1",
        "attack/pgd_linf/acc_eps0.2",
        "boundary/w20/tv_iso_mean",
        "boundary/w40/distance_mean",
        "boundary/w40/boundary_found",
        "geometry/curvature_mean",
        "train_seconds",
    ):
        assert metric in results["metrics"]
    for row in results["rows"]:
        runs = by_configuration[row["configuration"]]
        assert row["experiments"] == row["succeeded"] == len(runs) == 2
        for metric, summary in row["metrics"].items():
            if metric.startswith("instability/"):  # one number per configuration, over seeds
                assert summary["n"] == 2 and summary["std"] is None
                continue
            values = [run[metric] for run in runs]
            assert summary["n"] == 2
            assert abs(summary["mean"] - statistics.fmean(values)) < 1e-12
            assert abs(summary["std"] - statistics.stdev(values)) < 1e-12
    assert 0.9 < results["rows"][0]["metrics"][COLUMN]["mean"] <= 1.0  # digits is learnt

    # `regbench results`: the terminal table, the CSV and the markdown.
    table = regbench(server, "results", sweep_id)
    assert table.exit_code == 0, table.output
    assert f"sweep {sweep_id}" in table.stdout
    for row in results["rows"]:
        values = [run[COLUMN] for run in by_configuration[row["configuration"]]]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        line = next(ln for ln in table.stdout.splitlines() if row["configuration"] in ln)
        assert f"{mean:.4f} ± {std:.4f}" in line, (line, mean, std)
    as_csv = regbench(server, "results", sweep_id, "--csv")
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [line["configuration"] for line in lines] == expected_labels
    assert all(int(line[f"{COLUMN}_n"]) == 2 for line in lines)
    markdown = regbench(server, "results", sweep_id, "--markdown").stdout.splitlines()
    # the results, then each configuration against the first (paired: the same seeds)
    assert len(markdown) == 2 + 3 + 1 + 2 + 3 and markdown[0].startswith("| configuration | n |")
    assert markdown[6].startswith("| configuration | test |")
    assert markdown[8].startswith("| regularizers=none | baseline |")
    assert all("| paired |" in line for line in markdown[9:])
    assert results["baseline"] == "regularizers=none"
    assert results["rows"][0]["instability"] == {"members": 2, "left_out": {}}

    # `regbench status`: the finished sweep, then the overview of every sweep.
    done_view = regbench(server, "status", sweep_id)
    assert done_view.exit_code == 0
    assert "succeeded" in done_view.stdout and "6 succeeded" in done_view.stdout
    overview = regbench(server, "status")
    assert overview.exit_code == 0 and sweep_id in overview.stdout

    # The report, built by the worker that finished the last job: PNG and HTML over HTTP.
    def report_done() -> dict[str, Any] | None:
        report = api.get(f"/api/v1/sweeps/{sweep_id}").json()["report"]
        assert report["status"] != "failed", report
        return report if report["status"] == "done" else None

    report = backend.wait(report_done, 60, "the sweep report", every=0.5)
    png = api.get(f"/api/v1/sweeps/{sweep_id}/report/report.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    page = api.get(f"/api/v1/sweeps/{sweep_id}/report/report.html")
    assert page.status_code == 200 and "data:image/png;base64," in page.text
    for label in expected_labels:
        assert label in page.text
    run = backend.mlflow().get_run(report["mlflow_run_id"])
    assert run.data.tags["regbench.sweep_id"] == sweep_id
    downloaded = regbench(server, "report", sweep_id, "-o", str(tmp_path / "report"))
    assert downloaded.exit_code == 0, downloaded.output
    assert (tmp_path / "report" / "report.html").read_text() == page.text
