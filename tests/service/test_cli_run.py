"""`regbench run` and `regbench catalog` as a user runs them: real processes, real MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

SPEC = {
    "name": "cli-test",
    "dataset": {"name": "digits", "size": 8, "train_size": 300, "test_size": 200},
    "model": {"name": "mlp", "hidden": [32]},
    "regularizers": [{"name": "l2", "weight": 0.0005}, {"name": "label_smoothing"}],
    "training": {"epochs": 3, "batch_size": 50, "lr": 0.1, "seed": 1, "device": "cpu"},
}


def regbench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGBENCH_DATA_DIR": str(cwd / "store")}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_same_spec_twice_gives_identical_json_except_run_id(tmp_path: Path) -> None:
    spec_file = write(tmp_path / "spec.yaml", SPEC)
    outputs = []
    for _ in range(2):
        done = regbench("run", str(spec_file), "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    first, second = outputs
    for key in ("test_accuracy", "test_loss", "train_accuracy", "epochs", "seed", "spec_hash"):
        assert key in first
    run_id = first.pop("mlflow_run_id")
    assert run_id != second.pop("mlflow_run_id")
    assert first == second
    assert first["epochs"] == 3 and first["seed"] == 1 and "reg/label_smoothing" in first

    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["regularizers.0.weight"] == "0.0005"
    assert run.data.tags["spec_hash"] == first["spec_hash"]
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "reg/l2")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "checkpoints", "metrics.json", "history.json"} <= artifacts
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/model.pt", "checkpoints/last.pt"}


@pytest.mark.parametrize(
    ("regularizer", "field", "hint"),
    [
        ({"name": "l3"}, "regularizers.0.name", "valid choices: "),
        ({"name": "l2", "weight": -1}, "regularizers.0.weight", "greater than or equal to 0"),
    ],
)
def test_invalid_spec_exits_non_zero_names_field_and_writes_nothing(
    tmp_path: Path, regularizer: dict, field: str, hint: str
) -> None:
    spec_file = write(tmp_path / "bad.yaml", {**SPEC, "regularizers": [regularizer]})
    done = regbench("run", str(spec_file), cwd=tmp_path)
    assert done.returncode == 2
    assert field in done.stderr and hint in done.stderr
    if regularizer["name"] == "l3":
        for name in ("l1", "l2", "elastic_net", "confidence_penalty", "label_smoothing"):
            assert name in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_grid_runs_every_point_and_prints_a_comparison(tmp_path: Path) -> None:
    grid = {
        "base": {**SPEC, "regularizers": [], "training": {**SPEC["training"], "epochs": 1}},
        "grid": {"regularizers": [[], [{"name": "l1"}]], "training.seed": [0, 1]},
    }
    done = regbench("run", str(write(tmp_path / "grid.yaml", grid)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "regularizers=none" in done.stdout and "regularizers=l1" in done.stdout
    assert "±" in done.stdout  # two seeds per configuration
    lines = [line for line in done.stdout.splitlines() if "regularizers=" in line]
    table = lines[:2]
    assert all("│ 2 │" in line for line in table)
    assert " churn " in done.stdout and " all agree " in done.stdout  # instability of 2 seeds
    # each row against the first: paired by seed, a test per metric, marked or n.s.
    assert "vs baseline regularizers=none" in done.stdout
    versus = lines[-2:]
    assert "baseline" in versus[0] and "paired" in versus[1]
    assert "p=" in versus[1] and ("n.s." in versus[1] or " *" in versus[1])


def test_run_refuses_an_unknown_baseline_before_training(tmp_path: Path) -> None:
    grid = {"base": SPEC, "grid": {"regularizers": [[], [{"name": "l1"}]]}}
    path = write(tmp_path / "grid.yaml", grid)
    done = regbench("run", str(path), "--baseline", "dropout", cwd=tmp_path)
    assert done.returncode == 2
    assert "choose one of 'regularizers=none'" in done.stderr
    assert not (tmp_path / "store").exists() and "test acc" not in done.stdout


def test_invalid_grid_point_is_refused_before_anything_runs(tmp_path: Path) -> None:
    grid = {"base": SPEC, "grid": {"regularizers.0.weight": [0.1, -0.1]}}
    done = regbench("run", str(write(tmp_path / "grid.yaml", grid)), cwd=tmp_path)
    assert done.returncode == 2
    assert "grid point 1" in done.stderr and "regularizers.0.weight" in done.stderr
    assert not (tmp_path / "store").exists()


def test_missing_dataset_files_fail_clearly_without_a_run(tmp_path: Path) -> None:
    spec = {**SPEC, "dataset": {"name": "mnist", "root": str(tmp_path / "nowhere")}}
    done = regbench("run", str(write(tmp_path / "mnist.yaml", spec)), cwd=tmp_path)
    assert done.returncode == 1
    assert "nowhere" in done.stderr and "download" in done.stderr


def test_catalog_lists_components_with_params(tmp_path: Path) -> None:
    done = regbench("catalog", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    catalog = json.loads(done.stdout)
    names = {kind: {c["name"] for c in items} for kind, items in catalog.items()}
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "blobs"} <= names["datasets"]
    assert {"lenet", "ddnet", "resnet18", "mlp"} <= names["models"]
    assert {
        "l1", "l2", "elastic_net", "label_smoothing", "confidence_penalty",
        "input_noise", "weight_noise",
    } <= names["regularizers"]  # fmt: skip
    l2 = next(c for c in catalog["regularizers"] if c["name"] == "l2")
    assert set(l2["params"]["properties"]) == {"weight", "mode", "exclude_bias_and_norm"}
    table = regbench("catalog", cwd=tmp_path)
    assert table.returncode == 0 and "confidence_penalty" in table.stdout


def test_analyses_run_after_training_and_every_plot_reaches_mlflow(tmp_path: Path) -> None:
    spec = {
        "name": "lenet-analyses",
        "dataset": {"name": "digits", "train_size": 300, "test_size": 100},
        "model": {"name": "lenet"},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
        "analyses": [
            {"kind": "boundary", "planes": 3, "resolution": 31},
            {"kind": "calibration"},
            {"kind": "geometry", "samples": 20, "iterations": 5},
            {
                "kind": "attack",
                "method": "pgd",
                "eps": [0, 0.1, 0.3],
                "steps": 5,
                "samples": 50,
                "steps_curve": [1, 5],
            },
            {"kind": "plots", "embedding_samples": 60},
        ],
    }
    done = regbench("run", str(write(tmp_path / "spec.yaml", spec)), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert 0 <= metrics["calibration/ece"] <= 1
    assert "boundary/w100/tv_iso_mean" in metrics
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run_id = metrics["mlflow_run_id"]
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "analyses/plots")}
    assert {
        "loss_curves.png", "accuracy_curves.png", "weights.png", "embedding_pca.png",
        "embedding_tsne.png", "feature_maps_conv1.png", "feature_maps_conv2.png",
        "saliency.png", "occlusion.png", "boundary_planes.png",
    } <= plots  # fmt: skip
    for folder in ("analyses/boundary", "analyses/calibration", "analyses/geometry"):
        assert client.list_artifacts(run_id, folder)
    attack = {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "analyses/attack")}
    assert {"accuracy_vs_eps.png", "accuracy_vs_steps.png", "per_class.csv"} <= attack
    assert metrics["geometry/curvature_mean"] > 0
    logged = client.get_run(run_id).data.metrics
    assert logged["calibration/ece"] == pytest.approx(metrics["calibration/ece"])


def test_analyze_a_finished_run_logs_into_the_same_run(tmp_path: Path) -> None:
    trained = regbench("run", str(write(tmp_path / "spec.yaml", SPEC)), "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_id = json.loads(trained.stdout)["mlflow_run_id"]

    bad = regbench("analyze", run_id, "--analysis", "astrology", cwd=tmp_path)
    assert bad.returncode == 2 and "0.kind" in bad.stderr and "calibration" in bad.stderr

    done = regbench(
        "analyze", run_id, "--analysis", "calibration",
        "--analysis", "{kind: boundary, planes: 2, resolution: 11}", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["mlflow_run_id"] == run_id and "calibration/ece" in metrics
    # Feedback on stderr while it works (off a terminal: a line as each starts, finishes).
    said = done.stderr.splitlines()
    assert f"run {run_id}: fetching its checkpoint and data" in said
    for number, kind in ((1, "calibration"), (2, "boundary")):
        assert f"analysis {number}/2 {kind}: started" in said, done.stderr
        assert re.search(rf"^analysis {number}/2 {kind}: done in \d+\.\d s$", done.stderr, re.M)
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert client.list_artifacts(run_id, "analyses/calibration")
    assert client.list_artifacts(run_id, "analyses/boundary")
    assert "boundary/w40/tv_iso_mean" in client.get_run(run_id).data.metrics

    missing = regbench("analyze", "0" * 32, "--analysis", "calibration", cwd=tmp_path)
    assert missing.returncode == 1 and "0" * 32 in missing.stderr
