"""Models: parameter counts against the study and torchvision, the contract every registered
model keeps (finite logits, gradients reaching every parameter, params that round-trip
through a spec), input normalization, centered softplus and dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pydantic import ValidationError
from torch import nn

from regcore.data.base import DataInfo
from regcore.models import create_model
from regcore.models.layers import ACTIVATIONS, CenteredSoftplus, Normalize, make_activation
from regcore.registries import MODELS
from regcore.registry import UnknownComponentError
from regcore.spec import ModelSpec

# The input shape each model is checked on; a new model must add its own.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "lenet": (1, 28, 28),
    "ddnet": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "mlp": (2,),
}


def data_info(input_shape: tuple[int, ...], num_classes: int = 10) -> DataInfo:
    channels = input_shape[0]
    return DataInfo(
        input_shape=input_shape,
        num_classes=num_classes,
        mean=tuple(0.3 + 0.1 * c for c in range(channels)),
        std=tuple(0.2 + 0.05 * c for c in range(channels)),
        class_names=tuple(f"class {k}" for k in range(num_classes)),
    )


def build(name: str, info: DataInfo, **params: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec.model_validate({"name": name, **params}), info)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def info_for(name: str) -> DataInfo:
    if name not in INPUT_SHAPES:
        pytest.fail(f"model {name!r} has no entry in INPUT_SHAPES; add the shape to test it on")
    return data_info(INPUT_SHAPES[name])


# --------------------------------------------------------------------------- parameter counts


def test_lenet_has_the_studys_parameter_count() -> None:
    assert count(build("lenet", data_info((1, 28, 28)))) == 61_706


def test_lenet_sizes_its_first_fc_layer_from_the_input() -> None:
    model = build("lenet", data_info((3, 32, 32)))
    assert model.fc1.in_features == 16 * 6 * 6
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_ddnet_has_the_studys_parameter_count() -> None:
    assert count(build("ddnet", data_info((3, 32, 32)))) == 1_147_978


@pytest.mark.parametrize("channels", [3, 1])
def test_resnet18_matches_torchvision(channels: int) -> None:
    info = data_info((channels, 32, 32), num_classes=100)
    reference = torchvision.models.resnet18(num_classes=100)
    if channels != 3:
        reference.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    ours = build("resnet18", info, stem="imagenet")
    assert count(ours) == count(reference)
    # same module names and shapes, so torchvision checkpoints would load
    shapes = {k: v.shape for k, v in ours.state_dict().items() if not k.startswith("normalize.")}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    cifar = build("resnet18", info, stem="cifar")
    assert count(cifar) == count(reference) - 64 * channels * (7 * 7 - 3 * 3)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name: str, activation: str) -> None:
    info = info_for(name)
    spec = ModelSpec.model_validate({"name": name, "activation": activation, "dropout": 0.0})
    again = ModelSpec.model_validate(spec.model_dump())
    assert again == spec and again.model_dump() == spec.model_dump()
    assert spec.model_dump()["activation"] == activation

    torch.manual_seed(0)
    model = create_model(spec, info).train()
    x = torch.rand(2, *info.input_shape)  # (B, *input_shape) in [0, 1]
    logits = model(x)
    assert logits.shape == (2, info.num_classes)
    assert torch.isfinite(logits).all()

    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, parameter_name
            assert parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", MODELS.names())
def test_default_activation_and_params_dump(name: str) -> None:
    dumped = ModelSpec.model_validate({"name": name}).model_dump()
    assert dumped["name"] == name and dumped["activation"] in ACTIVATIONS.names()
    assert {"dropout", "normalize", "softplus_beta", "learn_beta"} <= set(dumped)


def test_lenet_defaults_to_tanh_and_the_others_to_relu() -> None:
    defaults = {n: ModelSpec.model_validate({"name": n}).params.activation for n in INPUT_SHAPES}
    assert defaults == {"lenet": "tanh", "ddnet": "relu", "resnet18": "relu", "mlp": "relu"}


def test_every_layer_has_its_own_learnable_beta() -> None:
    model = build("lenet", data_info((1, 28, 28)), activation="centered_softplus")
    betas = [m.beta for m in model.modules() if isinstance(m, CenteredSoftplus)]
    assert len(betas) == 4 and len({id(beta) for beta in betas}) == 4
    assert all(isinstance(beta, nn.Parameter) and beta.item() == 5.0 for beta in betas)
    assert count(model) == 61_706 + 4

    fixed = build(
        "lenet", data_info((1, 28, 28)), activation="centered_softplus", learn_beta=False,
        softplus_beta=2.0,
    )  # fmt: skip
    assert count(fixed) == 61_706
    assert all(m.beta.item() == 2.0 for m in fixed.modules() if isinstance(m, CenteredSoftplus))


def test_mlp_takes_images_and_hidden_widths() -> None:
    model = build("mlp", data_info((1, 8, 8)), hidden=[32, 16])
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert count(model) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    linear = build("mlp", data_info((2,), num_classes=4), hidden=[])
    assert count(linear) == 2 * 4 + 4


# --------------------------------------------------------------------------- normalization


def test_normalize_per_channel_and_per_feature() -> None:
    images = Normalize((0.1, 0.5, 0.9), (0.1, 0.2, 0.3), (3, 4, 4))
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(images(x), (x - mean) / std)

    vectors = Normalize((0.2, 0.7), (0.5, 0.25), (2,))
    v = torch.rand(5, 2)
    torch.testing.assert_close(
        vectors(v), (v - torch.tensor([0.2, 0.7])) / torch.tensor([0.5, 0.25])
    )

    with pytest.raises(ValueError, match="mean/std need"):
        Normalize((0.5, 0.5), (0.2, 0.2), (3, 4, 4))


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_model_normalizes_its_input(name: str) -> None:
    """The mean image with normalize on reaches the first layer as zeros with it off."""
    info = info_for(name)
    seen: list[torch.Tensor] = []

    def first_layer_input(model: nn.Module) -> nn.Module:
        return next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))

    normalized = build(name, info)
    plain = build(name, info, normalize=False)
    for model in (normalized, plain):
        first_layer_input(model).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    mean = torch.tensor(info.mean).view(-1, *([1] * (len(info.input_shape) - 1)))
    normalized(mean.expand(info.input_shape).unsqueeze(0))
    plain(torch.zeros(1, *info.input_shape))
    assert torch.count_nonzero(seen[0]) == 0
    torch.testing.assert_close(seen[0], seen[1])
    assert not any(isinstance(m, Normalize) for m in plain.modules())


# --------------------------------------------------------------------------- activations


def test_centered_softplus_formula_and_origin() -> None:
    activation = CenteredSoftplus(beta=5.0)
    assert activation(torch.zeros(1)).item() == 0.0
    x = torch.linspace(-10, 10, 201, dtype=torch.float64)
    expected = (torch.log1p(torch.exp(5.0 * x)) - math.log(2.0)) / 5.0
    torch.testing.assert_close(activation.double()(x), expected)
    big = CenteredSoftplus(beta=5.0)(torch.tensor([1e4, -1e4]))  # no overflow
    torch.testing.assert_close(big, torch.tensor([1e4 - math.log(2) / 5, -math.log(2) / 5]))


@pytest.mark.parametrize("beta", [0.5, 5.0, 50.0])
def test_centered_softplus_curvature_is_at_most_beta_over_4(beta: float) -> None:
    activation = CenteredSoftplus(beta=beta).double()
    x = torch.linspace(-5, 5, 2001, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(activation(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    assert second.max().item() <= beta / 4 * (1 + 1e-9)
    assert second.max().item() == pytest.approx(beta / 4, rel=1e-3)  # reached at x = 0
    assert second.min().item() >= 0


def test_centered_softplus_beta_learns_only_when_learnable() -> None:
    learnable = CenteredSoftplus(beta=5.0, learnable=True)
    learnable(torch.linspace(-1, 1, 11)).pow(2).sum().backward()
    assert learnable.beta.grad is not None and learnable.beta.grad.abs() > 0

    fixed = CenteredSoftplus(beta=5.0, learnable=False)
    assert list(fixed.parameters()) == [] and "beta" in dict(fixed.named_buffers())


def test_make_activation() -> None:
    assert isinstance(make_activation("tanh"), nn.Tanh)
    softplus = make_activation("softplus", beta=3.0)
    assert isinstance(softplus, nn.Softplus) and softplus.beta == 3.0
    with pytest.raises(UnknownComponentError, match="valid choices: centered_softplus, relu"):
        make_activation("gelu")


# --------------------------------------------------------------------------- errors


def test_unknown_activation_lists_the_valid_names() -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate({"name": "lenet", "activation": "swish"})
    message = str(info.value)
    assert "swish" in message
    for name in ACTIVATIONS.names():
        assert name in message


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"softplus_beta": 0}, "softplus_beta"),
        ({"hidden": [0]}, "hidden"),
    ],
)
def test_bad_params_fail_validation(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ModelSpec.model_validate({"name": "mlp", **params})


def test_lenet_on_too_small_images_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"lenet needs inputs of at least 12x12.*model mlp"):
        build("lenet", data_info((1, 8, 8)))
    with pytest.raises(ValueError, match="image inputs"):
        build("lenet", data_info((2,)))


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("name", MODELS.names())
def test_dropout_is_applied_in_training_only(name: str) -> None:
    info = info_for(name)
    model = build(name, info, dropout=0.5)
    x = torch.rand(2, *info.input_shape)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
