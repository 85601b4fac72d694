"""Local runs (`regbench run`, `regbench analyze`) write only under the data directory:
working directories are named by MLflow run ids, new MLflow experiments keep their
artifacts under ids, and a run id that is not a plain id is refused before any
directory is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.progress import Progress

from regcore.spec import AnalysisSpec, ExperimentSpec
from service.local_runs import LocalRunner, RunFailedError
from service.settings import Settings, UnsafePathKeyError, confined
from tests.regcore.test_provenance import git_head

SPEC = {
    "dataset": {"name": "digits", "size": 8, "train_size": 200, "test_size": 100},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 1, "batch_size": 50, "device": "cpu"},
}


def outside_files(tmp_path: Path, data_dir: Path) -> list[Path]:
    return [
        path
        for path in tmp_path.rglob("*")
        if not path.resolve().is_relative_to(data_dir.resolve()) and path != data_dir
    ]


@pytest.mark.parametrize("run_id", ["../../outside", "../outside/x", "ABSOLUTE", "a/b", ".."])
def test_analyze_refuses_a_run_id_that_is_not_an_id(tmp_path: Path, run_id: str) -> None:
    data_dir = tmp_path / "data"
    if run_id == "ABSOLUTE":
        run_id = str(tmp_path / "elsewhere")
    runner = LocalRunner(Settings(data_dir=data_dir))
    with pytest.raises(RunFailedError, match="not an MLflow run id"):
        runner.analyze(run_id, [AnalysisSpec.model_validate({"kind": "calibration"})])
    assert outside_files(tmp_path, data_dir) == []


def test_a_local_run_writes_only_under_the_data_dir(tmp_path: Path) -> None:
    """Even a name recorded by an earlier version (read with ``from_stored``) is only a
    label: the run, its working directory and its artifacts are placed by ids."""
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, mlflow_experiment="../../outside experiment")
    spec = ExperimentSpec.from_stored({**SPEC, "name": "../../../outside/run"})
    with Progress(disable=True) as progress:
        metrics = LocalRunner(settings).run(spec, progress, "run")
    run_id = metrics["mlflow_run_id"]
    assert (settings.runs_dir / run_id).is_dir()
    assert outside_files(tmp_path, data_dir) == []
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(run_id)
    # Shown as written, with the seed (used nowhere); a training run, at this commit.
    assert run.info.run_name == "../../../outside/run seed=0"
    assert run.data.tags["regbench.kind"] == "train"
    assert run.data.tags.get("mlflow.source.git.commit") == git_head()
    assert run.data.tags.get("regbench.git_commit") == git_head()
    assert run.info.artifact_uri.startswith((settings.artifact_root / "default").as_uri())


@pytest.mark.parametrize("key", ["..", ".", "", "a/b", "../x", "x\x00", "-x", "a b", "é", "id\n"])
def test_confined_refuses_anything_but_a_plain_id(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafePathKeyError):
        confined(tmp_path, key)


def test_confined_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "abc123").symlink_to(tmp_path)
    with pytest.raises(UnsafePathKeyError):
        confined(root, "abc123")
    assert confined(root, "0123abcdef") == root / "0123abcdef"
