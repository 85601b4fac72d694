from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.slow  # about 4 s: plots are drawn
def test_analyses_report_when_they_start_how_far_they_are_and_when_they_finish(
    tmp_path: Path,
) -> None:
    """Each analysis is announced, reports its progress through the context's plain
    callable (never beyond 0..1, never backwards), and is timed when it finished."""
    from regcore.analysis.base import AnalysisEvent
    from regcore.data import load_dataset
    from regcore.pipeline import analyze
    from regcore.spec import AnalysisSpec
    from regcore.train import build_model

    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 8, "train_size": 100, "test_size": 64},
            "model": {"name": "mlp", "hidden": [8]},
            "training": {"epochs": 1, "device": "cpu"},
        }
    )
    data = load_dataset(spec.dataset, 0)
    model, _ = build_model(spec, data.info)
    analyses = [
        AnalysisSpec.model_validate(entry)
        for entry in (
            {"kind": "calibration"},
            {"kind": "attack", "eps": [0.1], "samples": 32, "batch_size": 8, "steps": 2},
            {"kind": "boundary", "planes": 4, "resolution": 8, "batch_size": 64},
            {"kind": "geometry", "samples": 12, "batch_size": 4, "iterations": 3},
        )
    ]
    events: list[AnalysisEvent] = []

    analyze(
        spec, model.state_dict(), analyses, workdir=tmp_path, data=data, on_progress=events.append
    )

    kinds = ["calibration", "attack", "boundary", "geometry"]
    assert [e.kind for e in events if e.message == "started"] == kinds
    assert [(e.index, e.total, e.kind) for e in events if e.finished] == [
        (index, 4, kind) for index, kind in enumerate(kinds, start=1)
    ]
    for kind in kinds:
        mine = [e for e in events if e.kind == kind]
        fractions = [e.fraction for e in mine]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
        assert mine[-1].finished and mine[-1].seconds >= 0.0
    # the long ones say how far they are in between
    for kind, says in (("attack", "examples"), ("boundary", "planes"), ("geometry", "samples")):
        between = [e for e in events if e.kind == kind and 0.0 < e.fraction < 1.0]
        assert between and all(says in e.message for e in between), kind
