"""Every model and every regularizer on CUDA: one step each with a finite loss and gradients
on every trained parameter, bf16 against fp32 per regularizer family within the stated
tolerances (regcore.runtime), channels-last against the default layout, torch.compile
with its default backend."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch._inductor import config as inductor_config

from regcore.data import DataInfo, DataSplits, load_dataset
from regcore.registries import REGULARIZERS
from regcore.runtime import Runtime
from regcore.spec import ExperimentSpec
from regcore.train import build_model, build_optimizer, train, train_step
from tests.regcore.test_gpu_options import (
    BF16_TOLERANCE,
    FP32_FORWARD,
    colour_data,
    initial_parameters,
    regularizer_list,
    relative_update_difference,
    spec_with,
)

pytestmark = pytest.mark.gpu

# Model params that keep a one-step check small; every registered model is listed
# (checked without a GPU in tests/regcore/test_gpu_options.py).
MODEL_PARAMS: dict[str, list[dict[str, Any]]] = {
    "lenet": [{}, {"activation": "centered_softplus"}],
    "ddnet": [{}],
    "resnet18": [{}, {"stem": "imagenet"}, {"batch_norm": "lipschitz"}],
    "mlp": [{"hidden": [32]}],
}


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset(spec_with([]).dataset, 1)


@pytest.mark.parametrize(
    ("name", "params"),
    [(name, params) for name, variants in MODEL_PARAMS.items() for params in variants],
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_model_trains_a_step_on_cuda(
    name: str, params: dict[str, Any], precision: str, cuda: torch.device
) -> None:
    data = colour_data(channels=3, side=32, n=16)
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {"name": name, **params},
            "training": {"device": "cuda", "precision": precision, "channels_last": True},
        }
    )
    model, regularizers = build_model(spec, data.info)
    model.to(cuda)
    rt = Runtime.build(spec.training, model, regularizers, cuda)
    optimizer = build_optimizer(model, spec.training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    train_split = rt.prepare_data(data.to(cuda)).train  # channels-last for image inputs
    result = train_step(
        model, regularizers, optimizer, scheduler, train_split.x, train_split.y,
        epoch=1, step=0, steps_per_epoch=1, total_steps=1, runtime=rt,
    )  # fmt: skip
    assert torch.isfinite(result.loss) and result.logits.dtype == torch.float32
    assert result.logits.is_cuda
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_regularizer_trains_a_step_on_cuda(
    name: str, digits: DataSplits, cuda: torch.device
) -> None:
    spec = spec_with(regularizer_list(name), device="cuda")
    model, regularizers = build_model(spec, digits.info)
    model.to(cuda)
    rt = Runtime.build(spec.training, model, regularizers, cuda)
    optimizer = build_optimizer(model, spec.training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    x, y = digits.train.x[:32].to(cuda), digits.train.y[:32].to(cuda)
    result = train_step(
        model, regularizers, optimizer, scheduler, x, y,
        epoch=1, step=0, steps_per_epoch=1, total_steps=1, runtime=rt,
    )  # fmt: skip
    assert torch.isfinite(result.loss)
    for term_name, term in result.terms.items():
        assert term.is_cuda and torch.isfinite(term), term_name
    moved = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert moved, "no parameter changed"
    for parameter_name, parameter in model.named_parameters():
        assert parameter.is_cuda, parameter_name
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), parameter_name
    for buffer_name, buffer in model.named_buffers():
        assert buffer.is_cuda, buffer_name


def quiet_train(spec: ExperimentSpec, data: DataSplits) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(spec, data)


@pytest.mark.parametrize("name", ["none", *REGULARIZERS.names()])
def test_bf16_against_fp32_on_cuda(name: str, digits: DataSplits, cuda: torch.device) -> None:
    fp32_spec = spec_with(regularizer_list(name), device="cuda")
    bf16_spec = spec_with(regularizer_list(name), device="cuda", precision="bf16")
    fp32, bf16 = quiet_train(fp32_spec, digits), quiet_train(bf16_spec, digits)
    initial = {k: v.to(cuda) for k, v in initial_parameters(fp32_spec, digits.info).items()}
    update_difference = relative_update_difference(fp32.model, bf16.model, initial)
    loss32, loss16 = fp32.history[-1]["train/loss"], bf16.history[-1]["train/loss"]
    if name in FP32_FORWARD:  # both fp32; only the GPU's own run-to-run noise apart
        assert update_difference < 1e-3
        return
    update_tolerance, loss_tolerance = BF16_TOLERANCE.get(name, BF16_TOLERANCE["default"])
    assert 0 < update_difference < update_tolerance
    assert abs(loss16 - loss32) <= loss_tolerance * abs(loss32)


@pytest.mark.parametrize(
    "regularizers",
    [
        [],
        [{"name": "input_noise"}, {"name": "weight_noise"}, {"name": "cutout", "size": 4}],
        [{"name": "jacobian"}, {"name": "svb_hard"}],
        [{"name": "spectral_norm", "eval_iterations": 5}],
    ],
    ids=["plain", "noise-cutout", "jacobian-svb", "spectral_norm"],
)
@pytest.mark.usefixtures("no_tf32")
def test_channels_last_on_cuda_gives_the_same_numbers(
    regularizers: list[dict[str, Any]], cuda: torch.device
) -> None:
    """LeNet (tanh: smooth, so float rounding stays rounding; a ReLU net on random data
    turns 1e-6 into 1e-2 within a few steps wherever a unit crosses zero)."""
    data = colour_data(channels=3, side=32, n=64)
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "seed": 3, "device": "cuda"}
    payload = {"dataset": {"name": "digits"}, "model": {"name": "lenet", "dropout": 0.1}}
    plain = ExperimentSpec.model_validate(
        payload | {"regularizers": regularizers, "training": base}
    )
    last = ExperimentSpec.model_validate(
        payload | {"regularizers": regularizers, "training": base | {"channels_last": True}}
    )
    a, b = train(plain, data), train(last, data)
    initial = {k: v.to(cuda) for k, v in initial_parameters(plain, data.info).items()}
    assert relative_update_difference(a.model, b.model, initial) < 1e-3
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_b["train/loss"] == pytest.approx(row_a["train/loss"], rel=1e-4)


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize(
    "regularizers",
    [[], [{"name": "l2"}, {"name": "input_noise"}, {"name": "mixup"}], [{"name": "lcnn"}]],
    ids=["plain", "l2-noise-mixup", "lcnn"],
)
def test_compile_on_cuda(
    regularizers: list[dict[str, Any]],
    digits: DataSplits,
    cuda: torch.device,
    capsys: pytest.CaptureFixture,
) -> None:
    """The default backend (inductor, triton kernels); no fallback warning, and the same
    training as eager within float tolerance (dropout drawn as eager draws it)."""
    torch._dynamo.reset()
    eager = quiet_train(spec_with(regularizers, device="cuda", epochs=2), digits)
    with (
        warnings.catch_warnings(record=True) as caught,
        inductor_config.patch(fallback_random=True),
    ):
        warnings.simplefilter("always")
        compiled = train(spec_with(regularizers, device="cuda", epochs=2, compile=True), digits)
    fallbacks = [str(w.message) for w in caught if "training.compile" in str(w.message)]
    assert not fallbacks, fallbacks
    seconds = [row["epoch_seconds"] for row in compiled.history]
    with capsys.disabled():
        print(f"\n  compile {regularizers}: epoch seconds {seconds} (the first compiles)")
    initial = {
        k: v.to(cuda) for k, v in initial_parameters(spec_with(regularizers), digits.info).items()
    }
    assert relative_update_difference(eager.model, compiled.model, initial) < 1e-2


def test_compile_with_bf16_and_channels_last_on_cuda(digits: DataSplits) -> None:
    torch._dynamo.reset()
    spec = spec_with([], device="cuda", precision="bf16", channels_last=True, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile fallback warns so
        result = train(spec, digits)
    assert all(torch.isfinite(torch.tensor(row["train/loss"])) for row in result.history)


def test_cuda_logits_and_loss_are_fp32_under_bf16(cuda: torch.device) -> None:
    info = DataInfo((1, 28, 28), 10, (0.5,), (0.25,), tuple("0123456789"))
    spec = spec_with([{"name": "label_smoothing"}], device="cuda", precision="bf16")
    model, regularizers = build_model(spec, info)
    model.to(cuda)
    rt = Runtime.build(spec.training, model, regularizers, cuda)
    x = torch.rand(8, 1, 28, 28, device=cuda)
    seen: list[torch.dtype] = []
    model.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    logits = rt.forward(model, x)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    assert F.cross_entropy(logits, torch.zeros(8, dtype=torch.long, device=cuda)).dtype == (
        torch.float32
    )
