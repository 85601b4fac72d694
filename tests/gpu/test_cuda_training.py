"""Training on CUDA: LeNet epochs on real MNIST (timed, printed), the data resident on the
device with no host-to-device copy per batch, resume from a checkpoint written on the
GPU, and deterministic mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from regcore.data import DataSplits, load_dataset
from regcore.spec import ExperimentSpec
from regcore.train import Callbacks, TrainingCancelledError, evaluate, train

pytestmark = pytest.mark.gpu


def mnist_spec(root: Path, **training: Any) -> ExperimentSpec:
    """The study's LeNet recipe on all 60,000 training images (no validation split)."""
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "mnist", "root": str(root), "val_fraction": 0},
            "model": {"name": "lenet"},
            "training": {"epochs": 2, "batch_size": 100, "lr": 0.1, "momentum": 0.9}
            | {"seed": 0, "device": "cuda"}
            | training,
        }
    )


def digits_spec(regularizers: list[dict[str, Any]], **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 8, "train_size": 1000, "test_size": 200},
            "model": {"name": "mlp", "hidden": [64], "dropout": 0.3},
            "regularizers": regularizers,
            "training": {"epochs": 3, "batch_size": 50, "lr": 0.1, "seed": 4, "device": "cuda"}
            | training,
        }
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"precision": "bf16"},
        {"channels_last": True},
        {"precision": "bf16", "channels_last": True},
    ],
    ids=["fp32", "bf16", "channels_last", "bf16-channels_last"],
)
def test_lenet_epochs_on_mnist(
    options: dict[str, Any],
    mnist_root: Path,
    mnist: DataSplits,
    cuda: torch.device,
    capsys: pytest.CaptureFixture,
) -> None:
    spec = mnist_spec(mnist_root, **options)
    data = mnist  # on the CPU: train() moves it to the GPU once
    started = time.perf_counter()
    result = train(spec, data)
    total = time.perf_counter() - started
    _, accuracy = evaluate(result.model, data.test.to(cuda))
    seconds = ", ".join(f"{row['epoch_seconds']:.2f}" for row in result.history)
    with capsys.disabled():
        print(
            f"\n  LeNet, MNIST 60,000 images, batch 100, {torch.cuda.get_device_name(cuda)}, "
            f"{'+'.join(f'{k}={v}' for k, v in options.items()) or 'fp32'}: epoch seconds "
            f"{seconds} (the first includes warm-up), train() {total:.2f} s, "
            f"test accuracy {accuracy:.4f}"
        )
    assert result.device.type == "cuda"
    assert next(result.model.parameters()).is_cuda
    assert accuracy > 0.95


def test_an_epoch_copies_nothing_from_the_host_per_batch(cuda: torch.device) -> None:
    """Host-to-device copies counted by the profiler: one more epoch (20 steps) may add the
    epoch's batch order, never one copy per batch."""
    regularizers = [
        {"name": "l2"},
        {"name": "input_noise", "sigma": 0.05},
        {"name": "label_smoothing"},
        {"name": "adversarial_training", "eps": 0.1, "steps": 2},
    ]
    data = load_dataset(digits_spec([]).dataset, 4).to(cuda)
    steps_per_epoch = -(-len(data.train) // 50)

    def host_to_device_copies(epochs: int) -> int:
        spec = digits_spec(regularizers, epochs=epochs)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            train(spec, data)
            torch.cuda.synchronize()
        return sum(1 for event in prof.events() if "Memcpy HtoD" in event.name)

    one, three = host_to_device_copies(1), host_to_device_copies(3)
    per_epoch = (three - one) / 2
    assert per_epoch <= 3, f"{per_epoch} host-to-device copies per {steps_per_epoch}-step epoch"


def test_resume_from_a_gpu_checkpoint(tmp_path: Path, cuda: torch.device) -> None:
    """RNG states (CPU, CUDA, the shuffle) come back from a checkpoint loaded onto the GPU:
    dropout masks and input noise continue as if never stopped."""
    spec = digits_spec([{"name": "input_noise", "sigma": 0.1}])
    data = load_dataset(spec.dataset, spec.training.seed)
    straight = train(spec, data, workdir=tmp_path / "straight")
    done: list[int] = []
    stop_after_one = Callbacks(
        on_epoch=lambda epoch, _: done.append(epoch), should_cancel=lambda: len(done) >= 1
    )
    with pytest.raises(TrainingCancelledError):
        train(spec, data, workdir=tmp_path / "stopped", callbacks=stop_after_one)
    resumed = train(spec, data, workdir=tmp_path / "stopped")
    assert resumed.resumed_from_epoch == 1
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_deterministic_training_repeats_bitwise(cuda: torch.device) -> None:
    spec = digits_spec([{"name": "input_noise", "sigma": 0.1}], deterministic=True, epochs=2)
    data = load_dataset(spec.dataset, spec.training.seed)
    try:
        first, second = train(spec, data), train(spec, data)
    finally:
        torch.use_deterministic_algorithms(False)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
