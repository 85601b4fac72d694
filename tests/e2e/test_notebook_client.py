"""The notebook client (client.notebook.Regbench) against a live stack: the API under
uvicorn, a real Celery worker, on the embedded SQLite job store and broker and on
PostgreSQL and Redis, with a local MLflow store. Submit a grid from a YAML file, wait
with the text progress bar, read the results and the experiments as DataFrames,
download a run's artifacts."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pytest
import yaml

from client.notebook import Regbench
from tests.e2e.test_http_to_worker import start_api
from tests.worker.conftest import FAST_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow


def test_a_grid_from_a_notebook(backend: Backend, tmp_path: Path) -> None:
    api = start_api(backend)
    backend.start_worker()
    # A name of its own per backend: the MLflow store is shared by the session's tests.
    base = spec_with(FAST_SPEC, name=f"notebook-{backend.name}", training={"epochs": 2})
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"base": base, "grid": {"training.seed": [0, 1]}}))

    with Regbench(str(api.base_url)) as rb:
        sweep = rb.submit(grid_file)
        assert (sweep.kind, sweep.size, sweep.new) == ("sweep", 2, 2)
        log = io.StringIO()  # off a terminal: one line per change
        state = rb.wait(sweep, progress="text", poll_s=0.2, timeout_s=300, stream=log)
        assert state["status"] == "succeeded", state
        lines = log.getvalue().splitlines()
        assert lines[-1].startswith(f"sweep {sweep.id[:12]}: 100% ") and "2 succeeded" in lines[-1]
        assert len(lines) == len(set(lines))  # no line repeated

        # The same spec as one experiment: it exists already, and waiting returns at once.
        point = {**base, "training": {**base["training"], "seed": 0}}
        single = rb.submit(point)
        assert (single.kind, single.new) == ("experiment", 0)
        assert rb.wait(single.id, progress=False)["status"] == "succeeded"

        runs = rb.experiments_frame(sweep)
        assert list(runs["seed"]) == [0, 1] and set(runs["status"]) == {"succeeded"}
        assert single.id in runs.index
        table = rb.results_frame(sweep)
        assert list(table.index) == ["base"] and table.index.name == "configuration"
        row = table.loc["base"]
        assert row["experiments"] == row["succeeded"] == 2
        assert row["test_accuracy_n"] == 2
        accuracies = list(runs["test_accuracy"])
        assert row["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))

        listed = {a["path"]: a for a in rb.artifacts(single.id)}
        files = rb.download_artifacts(single, tmp_path / "out", prefix="checkpoints")
        assert files and all(
            f.relative_to(tmp_path / "out").parts[0] == "checkpoints" for f in files
        )
        for file in files:
            relative = file.relative_to(tmp_path / "out").as_posix()
            assert file.stat().st_size == listed[relative]["size"]
        everything = rb.download_artifacts(single, tmp_path / "all")
        assert len(everything) == sum(1 for a in listed.values() if not a["is_dir"])
