"""`regbench run` shows the MLflow run ids `regbench analyze` takes, and takes `--set`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.service.test_cli_run import SPEC, regbench, write


@pytest.mark.slow
def test_run_prints_each_runs_mlflow_id_and_applies_set(tmp_path: Path) -> None:
    spec_file = write(tmp_path / "spec.yaml", SPEC)  # 3 epochs as written
    done = regbench(
        "run", str(spec_file), "--set", "training.epochs=1", "--set",
        "regularizers.0.weight=0.002", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "regbench analyze RUN_ID" in done.stdout
    [run_id] = re.findall(r"\b[0-9a-f]{32}\b", done.stdout)  # in the MLflow runs table
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run = client.get_run(run_id)  # the id printed is the run's
    assert run.data.params["training.epochs"] == "1"
    assert run.data.params["regularizers.0.weight"] == "0.002"


def test_run_set_with_a_bad_path_names_the_valid_keys_before_anything_runs(
    tmp_path: Path,
) -> None:
    spec_file = write(tmp_path / "spec.yaml", SPEC)
    done = regbench("run", str(spec_file), "--set", "training.epoch=1", cwd=tmp_path)
    assert done.returncode == 2
    assert "--set training.epoch: training has no key 'epoch'" in done.stderr
    assert "epochs" in done.stderr and "weight_decay" in done.stderr  # defaults count too
    done = regbench("run", str(spec_file), "--set", "regularizers.0.wieght=1", cwd=tmp_path)
    assert done.returncode == 2
    assert "valid keys there: exclude_bias_and_norm, mode, name, weight" in done.stderr
    assert not (tmp_path / "store").exists()


def test_run_set_refuses_a_grid_axis(tmp_path: Path) -> None:
    grid = {"base": SPEC, "grid": {"training.seed": [0, 1]}}
    done = regbench(
        "run", str(write(tmp_path / "grid.yaml", grid)), "--set", "training.seed=3", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "'training.seed' is an axis of the grid" in done.stderr
    assert not (tmp_path / "store").exists()
