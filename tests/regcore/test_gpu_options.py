"""The accelerator options of a spec, checked on the CPU: devices that are missing fail
loudly, bf16 autocast against fp32 per regularizer family, channels-last against the
default layout, torch.compile and its fallbacks, the cheap final train-set evaluation.
The same checks on CUDA are in tests/gpu (``make gpu-test``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from regcore import runtime
from regcore.data import DataInfo, DataSplits, Split, load_dataset
from regcore.pipeline import final_metrics, run, train_eval_subset
from regcore.registries import ATTACKS, MODELS, REGULARIZERS
from regcore.regularizers.base import Regularizer, stored_weight
from regcore.runtime import CompiledForward, DeviceUnavailableError, Runtime, resolve_device
from regcore.spec import ExperimentSpec
from regcore.train import TrainResult, batch_order, build_model, evaluate, seed_everything, train

# Params that keep a regularizer cheap (or valid on 1x28x28 digits) in a three-step run.
CHEAP: dict[str, dict[str, Any]] = {
    "augment": {"flip": False},
    "adversarial_training": {"eps": 0.1, "steps": 3},
    "lcnn": {"eval_iterations": 10},
    "spectral_norm": {"eval_iterations": 10},
}

# bf16 against fp32 after three SGD steps of LeNet (regcore.runtime states the same):
# (relative difference of the weight updates, relative difference of the final loss).
BF16_TOLERANCE: dict[str, tuple[float, float]] = {
    "default": (6e-2, 3e-3),  # plain, weight and logit penalties, noise, constraints
    "adversarial_training": (3e-1, 1e-2),  # PGD in bf16: sign(grad) flips near zero
}
# The penalty differentiates the training forward, which therefore stays fp32: identical.
FP32_FORWARD = ("jacobian", "grad_reg")


def spec_with(regularizers: list[dict[str, Any]], **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "train_size": 96, "test_size": 50, "val_fraction": 0},
            "model": {"name": "lenet", "dropout": 0.1},
            "regularizers": regularizers,
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 1, "device": "cpu"}
            | training,
        }
    )


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset(spec_with([]).dataset, 1)


def regularizer_list(name: str) -> list[dict[str, Any]]:
    return [] if name == "none" else [{"name": name, **CHEAP.get(name, {})}]


def initial_parameters(spec: ExperimentSpec, info: DataInfo) -> dict[str, torch.Tensor]:
    seed_everything(spec.training.seed)  # what train() does before building the model
    model, _ = build_model(spec, info)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def quiet_train(spec: ExperimentSpec, data: DataSplits) -> TrainResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 with jacobian says its forward stays fp32
        return train(spec, data)


def relative_update_difference(
    a: nn.Module, b: nn.Module, initial: dict[str, torch.Tensor]
) -> float:
    """||w_a - w_b|| / ||w_a - w_0|| over the parameters: how far apart two runs' updates are."""
    params_a = {k: p.detach() for k, p in a.named_parameters()}
    params_b = {k: p.detach() for k, p in b.named_parameters()}
    apart = sum(((params_a[k] - params_b[k]) ** 2).sum() for k in params_a)
    moved = sum(((params_a[k] - initial[k]) ** 2).sum() for k in params_a)
    return float((apart / moved).sqrt())


# --------------------------------------------------------------------------- devices


def test_a_named_device_that_is_missing_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(DeviceUnavailableError, match="MPS is not available"):
        resolve_device("mps")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailableError, match="1 CUDA device"):
        resolve_device("cuda:1")


def test_training_on_a_missing_gpu_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, digits: DataSplits
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError):
        train(spec_with([], device="cuda"), digits)


def test_the_epoch_order_moves_to_the_device_once_and_is_unchanged() -> None:
    expected = torch.randperm(103, generator=torch.Generator().manual_seed(5)).split(10)
    batches = batch_order(103, 10, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert [b.tolist() for b in batches] == [b.tolist() for b in expected]
    assert len({b.untyped_storage().data_ptr() for b in batches}) == 1  # one tensor, split


# --------------------------------------------------------------------------- spec fields


def test_precision_is_science_and_the_other_options_are_not() -> None:
    plain = spec_with([])
    assert "precision" not in plain.identity()["training"]  # earlier specs keep their hash
    assert spec_with([], precision="fp32").spec_hash() == plain.spec_hash()
    assert spec_with([], precision="bf16").spec_hash() != plain.spec_hash()
    for field, value in [("channels_last", True), ("compile", True), ("final_train_eval", 0)]:
        assert spec_with([], **{field: value}).spec_hash() == plain.spec_hash(), field
    with pytest.raises(ValueError, match="precision"):
        spec_with([], precision="fp16")
    with pytest.raises(ValueError, match="final_train_eval"):
        spec_with([], final_train_eval=-1)


# --------------------------------------------------------------------------- bf16


@pytest.mark.parametrize("name", ["none", *REGULARIZERS.names()])
def test_bf16_against_fp32_per_regularizer(name: str, digits: DataSplits) -> None:
    fp32_spec = spec_with(regularizer_list(name))
    bf16_spec = spec_with(regularizer_list(name), precision="bf16")
    fp32, bf16 = quiet_train(fp32_spec, digits), quiet_train(bf16_spec, digits)
    initial = initial_parameters(fp32_spec, digits.info)
    update_difference = relative_update_difference(fp32.model, bf16.model, initial)
    loss32, loss16 = fp32.history[-1]["train/loss"], bf16.history[-1]["train/loss"]
    if name in FP32_FORWARD:
        assert update_difference == 0.0 and loss16 == loss32
        return
    update_tolerance, loss_tolerance = BF16_TOLERANCE.get(name, BF16_TOLERANCE["default"])
    assert 0 < update_difference < update_tolerance  # bf16 did run, and stayed close
    assert abs(loss16 - loss32) <= loss_tolerance * abs(loss32)


def test_bf16_runs_the_forward_in_bf16_and_the_loss_in_fp32() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    regularizers: dict[str, Regularizer] = {}
    spec = spec_with([], precision="bf16")
    rt = Runtime.build(spec.training, model, regularizers, torch.device("cpu"))
    inner: list[torch.dtype] = []
    model.register_forward_hook(lambda _m, _i, out: inner.append(out.dtype))
    logits = rt.forward(model, torch.rand(4, 1, 4, 4))
    assert inner == [torch.bfloat16] and logits.dtype == torch.float32


def test_which_penalties_run_under_autocast() -> None:
    spec = spec_with(
        [{"name": "adversarial_training"}, {"name": "l2"}, {"name": "cure"}], precision="bf16"
    )
    model, regularizers = build_model(spec, DataInfo((1, 28, 28), 10, (0.5,), (0.25,), ("a",)))
    rt = Runtime.build(spec.training, model, regularizers, torch.device("cpu"))
    assert rt.autocast_forward
    assert rt.autocast_penalties == {"adversarial_training"}
    jacobian = spec_with([{"name": "jacobian"}], precision="bf16")
    model, regularizers = build_model(jacobian, DataInfo((1, 28, 28), 10, (0.5,), (0.25,), ("a",)))
    with pytest.warns(UserWarning, match="jacobian differentiates the training forward"):
        rt = Runtime.build(jacobian.training, model, regularizers, torch.device("cpu"))
    assert not rt.autocast_forward


def test_spectral_bound_estimates_sigma_in_fp32_under_autocast() -> None:
    spec = spec_with([{"name": "spectral_norm", "eval_iterations": 0}])
    model, _ = build_model(spec, DataInfo((1, 28, 28), 10, (0.5,), (0.25,), ("a",)))
    model.eval()
    plain = model.fc1.weight  # (120, 400) recomputed by the parametrization at each access
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.fc1.weight
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, rtol=0, atol=0)


# --------------------------------------------------------------------------- channels-last


def colour_data(channels: int = 3, side: int = 16, n: int = 64) -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, side, side, generator=generator)  # (N, C, H, W)
    y = torch.randint(0, 4, (n,), generator=generator)
    info = DataInfo((channels, side, side), 4, (0.5,) * channels, (0.25,) * channels, tuple("abcd"))
    return DataSplits(Split(x, y), Split(x[:16], y[:16]), Split(x[:32], y[:32]), info)


@pytest.mark.parametrize(
    "regularizers",
    [
        [{"name": "input_noise"}, {"name": "weight_noise"}, {"name": "cutout", "size": 4}],
        [{"name": "jacobian"}, {"name": "svb_hard"}],
        [{"name": "spectral_norm", "eval_iterations": 5}],
    ],
    ids=["noise-cutout", "jacobian-svb", "spectral_norm"],
)
def test_channels_last_gives_the_same_numbers(regularizers: list[dict[str, Any]]) -> None:
    data = colour_data()
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "seed": 3, "device": "cpu"}
    payload = {"dataset": {"name": "digits"}, "model": {"name": "lenet"}}
    plain = ExperimentSpec.model_validate(
        payload | {"regularizers": regularizers, "training": base}
    )
    last = ExperimentSpec.model_validate(
        payload | {"regularizers": regularizers, "training": base | {"channels_last": True}}
    )
    a, b = train(plain, data), train(last, data)
    assert stored_weight(b.model.conv2).is_contiguous(memory_format=torch.channels_last)
    for (name, x), (_, y) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-5, msg=name)
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_b["train/loss"] == pytest.approx(row_a["train/loss"], rel=1e-4)


def test_channels_last_converts_image_data_once_and_leaves_vectors() -> None:
    data = colour_data()
    spec = spec_with([], channels_last=True)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    rt = Runtime.build(spec.training, model, {}, torch.device("cpu"))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    converted = rt.prepare_data(data)
    assert converted.train.x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(converted.train.x, data.train.x)
    labels = torch.zeros(4, dtype=torch.long)
    vectors = DataSplits(
        Split(torch.rand(4, 2), labels), None, Split(torch.rand(4, 2), labels), data.info
    )
    assert rt.prepare_data(vectors).train.x is vectors.train.x


# --------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fast_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo and AOT autograd, the parts that refuse double backward and trace the
    parametrizations, without inductor's C++ code generation (minutes on two cores;
    tests/gpu compiles with the default backend)."""
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize(
    "regularizers",
    [[{"name": "l2"}, {"name": "input_noise"}], [{"name": "spectral_norm", "eval_iterations": 5}]],
    ids=["l2-noise", "spectral_norm"],
)
def test_compile_trains_like_eager(regularizers: list[dict[str, Any]], digits: DataSplits) -> None:
    eager = train(spec_with(regularizers), digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: it really compiled
        compiled = train(spec_with(regularizers, compile=True), digits)
    initial = initial_parameters(spec_with(regularizers), digits.info)
    assert relative_update_difference(eager.model, compiled.model, initial) < 1e-4
    # the returned model is the eager one: state-dict keys as without compile
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())


@pytest.mark.usefixtures("fast_compile")
def test_compile_falls_back_for_double_backward(digits: DataSplits) -> None:
    spec = spec_with([{"name": "jacobian"}], compile=True)
    with pytest.warns(UserWarning, match="jacobian needs a double backward"):
        result = train(spec, digits)
    plain = train(spec_with([{"name": "jacobian"}]), digits)
    assert result.history[-1]["train/loss"] == plain.history[-1]["train/loss"]


def test_a_failing_compiled_forward_falls_back_to_eager_for_good() -> None:
    model = nn.Linear(3, 2)
    forward = CompiledForward(model)

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backend compiler failed\nlong trace")

    forward.compiled = broken
    x = torch.rand(4, 3)
    with pytest.warns(RuntimeWarning, match="RuntimeError: backend compiler failed"):
        out = forward(x)
    torch.testing.assert_close(out, model(x))
    assert forward.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        forward(x)


# --------------------------------------------------------------------------- final metrics


def test_the_final_train_subset_is_fixed_and_sorted() -> None:
    subset = train_eval_subset(1000, 100)
    assert subset is not None and subset.tolist() == sorted(set(subset.tolist()))
    assert len(subset) == 100 and torch.equal(subset, train_eval_subset(1000, 100))
    assert train_eval_subset(1000, None) is None and train_eval_subset(50, 100) is None


@pytest.mark.parametrize("samples", [40, 0, None])
def test_final_train_eval(samples: int | None, digits: DataSplits) -> None:
    spec = spec_with([], final_train_eval=samples)
    result = train(spec, digits)
    metrics = final_metrics(spec, result, digits)
    if samples == 0:
        assert metrics["train_eval_samples"] == 0
        assert "train_loss" not in metrics and "train_accuracy" not in metrics
    elif samples is None:
        assert metrics["train_eval_samples"] == len(digits.train)
        loss, accuracy = evaluate(result.model, digits.train)
        assert (metrics["train_loss"], metrics["train_accuracy"]) == (loss, accuracy)
    else:
        subset = train_eval_subset(len(digits.train), samples)
        assert subset is not None
        part = Split(digits.train.x[subset], digits.train.y[subset])
        assert metrics["train_eval_samples"] == samples
        assert (metrics["train_loss"], metrics["train_accuracy"]) == evaluate(result.model, part)
    assert "test_accuracy" in metrics  # test (and val) stay whole


def test_the_pipeline_reports_the_train_eval_samples(tmp_path: Path, digits: DataSplits) -> None:
    outcome = run(spec_with([], final_train_eval=30), workdir=tmp_path, data=digits)
    assert outcome.metrics["train_eval_samples"] == 30


def test_the_gpu_tests_cover_every_model_and_attack() -> None:
    """tests/gpu cannot run here; its tables of models and attacks must still be complete."""
    from tests.gpu.test_cuda_analyses import ATTACK_PARAMS
    from tests.gpu.test_cuda_components import MODEL_PARAMS

    assert set(MODEL_PARAMS) == set(MODELS.names())
    assert set(ATTACK_PARAMS) == set(ATTACKS.names())
    assert set(CHEAP) <= set(REGULARIZERS.names())
