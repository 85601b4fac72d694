from __future__ import annotations

from pathlib import Path

import torch

from regcore.pipeline import run
from regcore.spec import ExperimentSpec
from regcore.tracking import MemoryTracker
from regcore.train import load_checkpoint

SPEC = ExperimentSpec.model_validate(
    {
        "dataset": {"name": "blobs", "n_train": 400, "n_test": 200},
        "model": {"name": "mlp", "hidden": [16]},
        "regularizers": [{"name": "l1", "weight": 1e-4}],
        "training": {"epochs": 3, "batch_size": 50, "lr": 0.1, "seed": 2, "device": "cpu"},
    }
)


def test_pipeline_trains_evaluates_and_logs_everything(tmp_path: Path) -> None:
    tracker = MemoryTracker()
    result = run(SPEC, tracker, workdir=tmp_path)

    metrics = result.metrics
    assert metrics["test_accuracy"] > 0.9  # four well-separated blobs
    assert metrics["epochs"] == 3 and metrics["seed"] == 2
    assert metrics["spec_hash"] == SPEC.spec_hash()
    assert tracker.tags["spec_hash"] == SPEC.spec_hash() and "torch.version" in tracker.tags
    assert tracker.params["regularizers.0.name"] == "l1"
    epoch_steps = [step for step, row in tracker.metrics if "val/accuracy" in row]
    assert epoch_steps == [1, 2, 3]
    assert all("reg/l1" in row for _, row in tracker.metrics if "val/accuracy" in row)
    logged = {(path.name, folder) for path, folder in tracker.artifacts}
    assert {
        ("spec.yaml", None),
        ("model.pt", "checkpoints"),
        ("last.pt", "checkpoints"),
        ("metrics.json", None),
        ("history.json", None),
    } <= logged

    saved = load_checkpoint(result.model_path)  # loads with weights_only=True
    assert ExperimentSpec.model_validate(saved["spec"]) == SPEC
    assert all(isinstance(t, torch.Tensor) for t in saved["model"].values())
    assert ExperimentSpec.from_file(tmp_path / "spec.yaml") == SPEC


def test_pipeline_records_the_test_predictions(tmp_path: Path) -> None:
    """The final model's test labels: consistent with test_accuracy, saved and logged as
    predictions/test.npy, not among the metrics; the checksum names the test set."""
    import numpy as np

    from regcore.data import load_dataset
    from regcore.instability import labels_checksum

    tracker = MemoryTracker()
    result = run(SPEC, tracker, workdir=tmp_path)
    predictions = result.predictions
    assert predictions is not None
    test = load_dataset(SPEC.dataset, SPEC.training.seed).test
    assert predictions.labels.shape == (len(test),)
    accuracy = float(np.mean(predictions.labels == test.y.numpy()))
    assert accuracy == result.metrics["test_accuracy"]
    assert predictions.labels_checksum == labels_checksum(test.y.numpy())
    assert np.array_equal(np.load(tmp_path / "predictions" / "test.npy"), predictions.labels)
    assert ("test.npy", "predictions") in {(p.name, folder) for p, folder in tracker.artifacts}
    assert not any("prediction" in key for key in result.metrics)
