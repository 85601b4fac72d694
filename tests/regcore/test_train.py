"""The training loop: determinism, exact resume, divergence, early stopping, schedules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from regcore.spec import ExperimentSpec
from regcore.train import (
    Callbacks,
    TrainingCancelledError,
    TrainingDivergedError,
    load_checkpoint,
    resolve_device,
    train,
)

ROOT = Path(__file__).resolve().parents[2]


def make_spec(**overrides: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "dataset": {"name": "digits", "size": 8, "train_size": 400, "test_size": 200},
        "model": {"name": "mlp", "hidden": [32], "dropout": 0.2},
        "regularizers": [
            {"name": "l2", "weight": 0.001},
            {"name": "confidence_penalty", "beta": 0.1},
            {"name": "input_noise", "sigma": 0.05},
        ],
        "training": {
            "epochs": 4,
            "batch_size": 64,
            "lr": 0.1,
            "momentum": 0.9,
            "schedule": {"kind": "step", "milestones": [0.5], "gamma": 0.1},
            "seed": 7,
            "device": "cpu",
        },
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return ExperimentSpec.model_validate(data)


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_two_runs_of_one_spec_are_identical() -> None:
    first, second = train(make_spec()), train(make_spec())
    assert without_timing(first.history) == without_timing(second.history)
    assert_same_weights(first.model, second.model)


def test_per_epoch_metrics_log_each_regularizer_term() -> None:
    result = train(make_spec())
    row = result.history[-1]
    for key in ("train/loss", "train/data_loss", "train/accuracy", "val/loss", "val/accuracy"):
        assert key in row
    assert row["reg/l2"] > 0 and row["reg/confidence_penalty"] < 0
    assert "reg/input_noise" not in row  # noise changes the batch, it adds no term
    total = row["train/data_loss"] + row["reg/l2"] + row["reg/confidence_penalty"]
    assert row["train/loss"] == pytest.approx(total, rel=1e-5)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_resume_after_a_stop_ends_with_the_same_weights(tmp_path: Path) -> None:
    spec = make_spec()
    uninterrupted = train(spec, workdir=tmp_path / "straight")

    epochs_done: list[int] = []
    stop_after_two = Callbacks(
        on_epoch=lambda epoch, _: epochs_done.append(epoch),
        should_cancel=lambda: len(epochs_done) >= 2,
    )
    with pytest.raises(TrainingCancelledError, match="after epoch 2"):
        train(spec, workdir=tmp_path / "stopped", callbacks=stop_after_two)
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch"] == 2

    resumed = train(spec, workdir=tmp_path / "stopped")
    assert resumed.resumed_from_epoch == 2
    assert_same_weights(uninterrupted.model, resumed.model)
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)


def test_checkpoint_holds_everything_for_resume(tmp_path: Path) -> None:
    train(make_spec(), workdir=tmp_path)
    checkpoint = load_checkpoint(tmp_path / "last.pt")  # weights_only=True
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "history", "global_step"):
        assert key in checkpoint
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda", "shuffle"}
    assert checkpoint["epoch"] == 4
    other = make_spec(training={"lr": 0.2})
    with pytest.raises(ValueError, match="another spec"):
        train(other, workdir=tmp_path)


def test_cancel_during_an_epoch() -> None:
    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingCancelledError, match="during epoch 1, step 3"):
        train(make_spec(), callbacks=Callbacks(should_cancel=cancel))


def test_progress_callbacks() -> None:
    steps: list[tuple[int, int, int]] = []
    epochs: list[int] = []
    train(
        make_spec(),
        callbacks=Callbacks(
            on_step=lambda *args: steps.append(args), on_epoch=lambda e, _: epochs.append(e)
        ),
    )
    assert epochs == [1, 2, 3, 4]
    assert len(steps) == 4 * 7  # 400 examples in batches of 64
    assert steps[-1] == (4, 7, 7)


def test_nan_loss_stops_with_epoch_and_step() -> None:
    spec = make_spec(training={"lr": 1e12, "momentum": 0.0}, regularizers=[])
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, step \d+"):
        train(spec)


def test_step_schedule_uses_fractions_of_training() -> None:
    result = train(make_spec())
    assert [row["lr"] for row in result.history] == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_decays_to_the_floor() -> None:
    spec = make_spec(training={"schedule": {"kind": "cosine", "min_lr_fraction": 0.1}})
    lrs = [row["lr"] for row in train(spec).history]
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)
    # epoch 4 starts 3/4 of the way through training
    assert lrs[-1] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi))))


def test_early_stopping_restores_the_best_weights(tmp_path: Path) -> None:
    # min_delta so large that nothing after epoch 1 counts as an improvement
    spec = make_spec(training={"epochs": 10, "early_stopping": {"patience": 2, "min_delta": 100.0}})
    result = train(spec, workdir=tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name])
    again = train(spec, workdir=tmp_path)  # resuming a finished run trains nothing more
    assert again.epochs_run == 3 and again.resumed_from_epoch == 3


def test_adam_and_adamw_train() -> None:
    for optimizer in ("adam", "adamw"):
        training = {"optimizer": optimizer, "lr": 0.003, "schedule": {"kind": "constant"}}
        spec = make_spec(training=training)
        history = train(spec).history
        assert history[-1]["train/data_loss"] < history[0]["train/data_loss"]


def test_device_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_lenet_on_digits_demo_reaches_90_percent() -> None:
    """The demo's unregularized configuration (what `make demo` prints first)."""
    demo = yaml.safe_load((ROOT / "examples" / "demo-grid.yaml").read_text())
    spec = ExperimentSpec.model_validate({**demo["base"], "regularizers": []})
    from regcore.data import load_dataset
    from regcore.train import evaluate

    data = load_dataset(spec.dataset, spec.training.seed)
    result = train(spec, data)
    _, accuracy = evaluate(result.model, data.test)
    assert accuracy >= 0.9


def test_jacobian_l2_and_dropout_combine_with_separate_terms() -> None:
    spec = make_spec(
        regularizers=[{"name": "jacobian", "weight": 0.01}, {"name": "l2", "weight": 0.001}],
        model={"dropout": 0.5},
        training={"epochs": 2},
    )
    row = train(spec).history[-1]
    assert row["reg/jacobian"] > 0 and row["reg/l2"] > 0
    total = row["train/data_loss"] + row["reg/jacobian"] + row["reg/l2"]
    assert row["train/loss"] == pytest.approx(total, rel=1e-5)
