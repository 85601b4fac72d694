"""The low-curvature family (Srinivas et al. NeurIPS 2022): centered softplus curvature,
the beta penalty, spectral-norm bounds (linear and true conv operator norms), gamma-Lipschitz
batch norm, and the lcnn preset."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcore.data.base import DataInfo
from regcore.models import create_model
from regcore.models.layers import CenteredSoftplus
from regcore.models.lipschitz_bn import LipschitzBatchNorm2d
from regcore.registries import REGULARIZERS
from regcore.regularizers import Regularizer, StepContext
from regcore.regularizers.spectral_norm import ConvSpectralBound, LinearSpectralBound
from regcore.spec import ExperimentSpec, ModelSpec, RegularizerSpec
from regcore.train import Callbacks, TrainingCancelledError, train

DIGITS_INFO = DataInfo((1, 28, 28), 10, (0.3,), (0.4,), tuple(str(k) for k in range(10)))
TOLERANCE = 1e-3  # relative slack allowed on the spectral bound


def make(name: str, **params: object) -> Regularizer:
    spec = RegularizerSpec.model_validate({"name": name, **params})
    return REGULARIZERS.get(name).target(spec.params)


def model(name: str, info: DataInfo = DIGITS_INFO, **params: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec.model_validate({"name": name, **params}), info)


def context(net: nn.Module, x: torch.Tensor) -> StepContext:
    logits = net(x)  # (B, C)
    y = torch.arange(x.shape[0]) % logits.shape[1]
    return StepContext(
        model=net, inputs=x, targets=y, logits=logits, data_loss=F.cross_entropy(logits, y),
        epoch=1, step=0, steps_per_epoch=1, total_steps=1, lr=0.1,
    )  # fmt: skip


def digits_spec(
    regularizers: list[dict[str, Any]], epochs: int = 2, **model: Any
) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 28, "train_size": 640, "test_size": 100},
            "model": {"name": "lenet", **model},
            "regularizers": regularizers,
            "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1, "device": "cpu"},
        }
    )


# --------------------------------------------------------------------------- operator norms
# Independent of regcore's code: the conv operator as an explicit matrix, and a long plain
# power iteration with conv / conv_transpose.


def conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
        "groups": conv.groups,
    }  # fmt: skip


def conv_matrix(weight: torch.Tensor, conv: nn.Conv2d, size: tuple[int, ...]) -> torch.Tensor:
    """The (out, in) matrix of x -> conv(x) on inputs of ``size``: the conv of each basis image."""
    n = math.prod(size)
    basis = torch.eye(n, dtype=torch.float64).view(n, *size)  # (n, C, H, W)
    return F.conv2d(basis, weight.double(), None, **conv_args(conv)).reshape(n, -1).T


def exact_conv_norm(weight: torch.Tensor, conv: nn.Conv2d, size: tuple[int, ...]) -> float:
    return torch.linalg.matrix_norm(conv_matrix(weight, conv, size), 2).item()


def power_conv_norm(
    weight: torch.Tensor, conv: nn.Conv2d, size: tuple[int, ...], iterations: int = 500
) -> float:
    w = weight.detach().double()
    generator = torch.Generator().manual_seed(123)
    u = torch.randn(1, *size, dtype=torch.float64, generator=generator)
    # the exact adjoint: output_padding restores the input size that the stride rounded off
    y = F.conv2d(u, w, None, **conv_args(conv))
    short = F.conv_transpose2d(y, w, None, **conv_args(conv)).shape[2:]
    lost = tuple(s - o for s, o in zip(size[1:], short, strict=True))
    for _ in range(iterations):
        y = F.conv2d(u, w, None, **conv_args(conv))
        u = F.conv_transpose2d(y, w, None, output_padding=lost, **conv_args(conv))
        u = u / u.norm()
    return F.conv2d(u, w, None, **conv_args(conv)).norm().item()


def constrained_norms(net: nn.Module) -> dict[str, tuple[float, float]]:
    """{layer: (independent power-iteration norm, exact norm)} of each bounded layer's
    effective weight (eval mode)."""
    net.eval()
    norms = {}
    with torch.no_grad():
        for name, layer in net.named_modules():
            if not hasattr(layer, "parametrizations"):
                continue
            bound = layer.parametrizations.weight[0]
            weight = layer.weight  # W_eff
            if isinstance(layer, nn.Linear):
                exact = torch.linalg.matrix_norm(weight.double(), 2).item()
                norms[name] = (exact, exact)
            else:
                size = tuple(bound._u.shape[1:])
                norms[name] = (
                    power_conv_norm(weight, layer, size),
                    exact_conv_norm(weight, layer, size),
                )
    return norms


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1}, (2, 5, 5)),
        (
            {"in_channels": 2, "out_channels": 4, "kernel_size": 3, "stride": 2, "groups": 2},
            (2, 6, 7),
        ),
        ({"in_channels": 3, "out_channels": 2, "kernel_size": 2, "stride": 2}, (3, 5, 5)),
        (
            {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": 2, "dilation": 2},
            (2, 6, 6),
        ),
    ],
)
def test_conv_power_iteration_matches_the_explicit_operator(
    conv: dict[str, int], size: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**conv).double()
    exact = exact_conv_norm(conv.weight, conv, size)
    power = power_conv_norm(conv.weight, conv, size)
    assert exact * (1 - 1e-6) <= power <= exact * (1 + 1e-9)  # converges from below
    if conv.stride == (1, 1):  # overlapping windows: the kernel's matrix norm is another number
        kernel = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), 2).item()
        assert abs(kernel - exact) > 1e-2 * exact

    bound = ConvSpectralBound(conv, size, gamma=1.0, power_iterations=1).double()
    weight = conv.weight.detach()
    x = torch.randn(1, *size, dtype=torch.float64)
    y = bound.apply_conv(x, weight)
    z = torch.randn_like(y)  # <A x, z> = <x, A^T z>: conv_transpose is the exact adjoint
    assert (y * z).sum().item() == pytest.approx((x * bound.apply_adjoint(z, weight)).sum().item())
    bound.refresh(weight, 50)
    assert bound.apply_conv(bound._u, weight).norm().item() == pytest.approx(exact, rel=1e-9)
    bound.gamma = exact / 2
    bounded = bound.eval()(weight)  # an active bound scales the operator onto gamma
    assert exact_conv_norm(bounded, conv, size) == pytest.approx(exact / 2, rel=1e-9)
    bound.gamma = exact * 2
    assert torch.equal(bound(weight), weight)  # an inactive one leaves the weight alone


# --------------------------------------------------------------------------- centered softplus


@pytest.mark.parametrize("beta", [0.3, 2.0, 5.0, 40.0])
def test_centered_softplus_passes_the_origin_with_curvature_at_most_beta_over_4(
    beta: float,
) -> None:
    activation = CenteredSoftplus(beta).double()
    beta = activation.beta.item()  # as stored (float32, then widened)
    assert activation(torch.zeros(3, dtype=torch.float64)).abs().max().item() == 0.0
    x = torch.linspace(-20 / beta, 20 / beta, 8001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(activation(x).sum(), x, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), x)
    assert curvature.max().item() <= beta / 4 * (1 + 1e-12)
    assert curvature.max().item() == pytest.approx(beta / 4, rel=1e-6)  # at x = 0, on the grid
    assert curvature.min().item() >= 0


# --------------------------------------------------------------------------- beta penalty


def test_beta_penalty_is_weight_times_sum_of_betas_and_reaches_every_beta() -> None:
    info = DataInfo((6,), 3, (0.5,), (0.25,), ("a", "b", "c"))
    net = model("mlp", info, hidden=[5, 4, 3], activation="centered_softplus")
    softplus = [m for m in net.modules() if isinstance(m, CenteredSoftplus)]
    with torch.no_grad():
        for module, beta in zip(softplus, [0.7, 2.5, 9.0], strict=True):
            module.beta.fill_(beta)
    term = make("beta_penalty", weight=0.3).penalty(context(net, torch.rand(4, 6)))
    assert term.item() == pytest.approx(0.3 * (0.7 + 2.5 + 9.0), rel=1e-6)
    term.backward()
    for module in softplus:  # d/d beta_l of lambda * sum beta = lambda
        assert module.beta.grad.item() == pytest.approx(0.3)

    with torch.no_grad():  # a beta below the floor counts as the floor the forward uses
        softplus[0].beta.fill_(-1.0)
    net.zero_grad()
    term = make("beta_penalty", weight=0.3).penalty(context(net, torch.rand(4, 6)))
    assert term.item() == pytest.approx(0.3 * (CenteredSoftplus.MIN_BETA + 2.5 + 9.0), rel=1e-6)
    term.backward()
    assert softplus[0].beta.grad.item() == 0.0


def test_beta_penalty_without_learnable_betas_adds_nothing_and_warns() -> None:
    for params in (
        {"activation": "tanh"},
        {"activation": "centered_softplus", "learn_beta": False},
    ):
        net = model("lenet", **params)
        reg = make("beta_penalty")
        with pytest.warns(UserWarning, match="no learnable centered softplus"):
            reg.setup(net, DIGITS_INFO)
        assert reg.penalty(context(net, torch.rand(2, 1, 28, 28))) is None


# --------------------------------------------------------------------------- spectral norm


def test_linear_bound_is_pytorchs_spectral_norm_scaled_to_gamma_when_active() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    with torch.no_grad():
        layer.weight.mul_(10)  # sigma well above gamma
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), 2).item()
    reference = torch.nn.utils.parametrizations.spectral_norm(copy.deepcopy(layer))
    for _ in range(100):
        reference(torch.zeros(1, 7, dtype=torch.float64))  # power iterations in training mode
    bound = LinearSpectralBound(layer.weight.detach(), gamma=0.5, power_iterations=1).double()
    for _ in range(100):
        bounded = bound(layer.weight.detach())
    torch.testing.assert_close(bounded, 0.5 * reference.eval().weight.detach())
    assert torch.linalg.matrix_norm(bounded, 2).item() == pytest.approx(0.5, rel=1e-9)

    loose = LinearSpectralBound(layer.weight.detach(), gamma=2 * sigma, power_iterations=1)
    assert torch.equal(loose.double()(layer.weight.detach()), layer.weight.detach())


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_spectral_norm_bounds_every_layer_after_training(gamma: float) -> None:
    result = train(digits_spec([{"name": "spectral_norm", "gamma": gamma}]))
    layers = {n for n, m in result.model.named_modules() if hasattr(m, "parametrizations")}
    assert layers == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    buffers = dict(result.model.named_buffers())
    assert buffers["conv2.parametrizations.weight.0._u"].shape == (1, 6, 14, 14)  # real input
    assert buffers["conv1.parametrizations.weight.0._u"].shape == (1, 1, 28, 28)
    norms = constrained_norms(result.model)
    for name, (power, exact) in norms.items():
        assert power <= gamma * (1 + TOLERANCE), name
        assert exact <= gamma * (1 + TOLERANCE), name
    # the bound binds: training pushes the layers onto it
    assert sum(exact >= gamma * (1 - TOLERANCE) for _, exact in norms.values()) >= 3
    assert math.isfinite(result.history[-1]["train/loss"])
    if gamma > 1:  # (a product of five layers <= 0.5 gives logits too small to fit in 2 epochs)
        assert result.history[-1]["train/accuracy"] > 0.6


def test_spectral_norm_only_on_chosen_layers_and_needs_a_match() -> None:
    net = model("lenet")
    make("spectral_norm", layers=["fc*"]).setup(net, DIGITS_INFO)
    chosen = {n for n, m in net.named_modules() if hasattr(m, "parametrizations")}
    assert chosen == {"fc1", "fc2", "fc3"}
    with pytest.raises(ValueError, match="no conv/linear layer matches"):
        make("spectral_norm", layers=["nothing*"]).setup(model("lenet"), DIGITS_INFO)


def test_spectral_norm_estimates_move_only_in_training_and_survive_copies() -> None:
    net = model("lenet")
    make("spectral_norm", eval_iterations=0).setup(net, DIGITS_INFO)
    u = net.conv2.parametrizations.weight[0]._u
    x = torch.rand(3, 1, 28, 28)
    before = u.clone()
    net.eval()
    net(x)
    assert torch.equal(u, before)
    net.train()
    net(x).sum().backward()
    assert not torch.equal(u, before)
    assert net.conv2.parametrizations.weight.original.grad is not None

    twin = copy.deepcopy(net).eval()
    fresh = model("lenet")
    make("spectral_norm").setup(fresh, DIGITS_INFO)
    fresh.load_state_dict(net.state_dict())  # the vectors travel with the state dict
    net.eval()
    torch.testing.assert_close(twin(x), net(x))
    torch.testing.assert_close(fresh.eval()(x), net(x))


def test_spectral_norm_resumes_exactly(tmp_path: Path) -> None:
    spec = digits_spec([{"name": "spectral_norm", "gamma": 0.7}])
    straight = train(spec, workdir=tmp_path / "straight")
    epochs: list[int] = []
    stop_after_one = Callbacks(
        on_epoch=lambda epoch, _: epochs.append(epoch), should_cancel=lambda: bool(epochs)
    )
    with pytest.raises(TrainingCancelledError, match="after epoch 1"):
        train(spec, workdir=tmp_path / "stopped", callbacks=stop_after_one)
    resumed = train(spec, workdir=tmp_path / "stopped")
    assert resumed.resumed_from_epoch == 1
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- Lipschitz batch norm


def skewed_batches(n: int = 6) -> list[torch.Tensor]:
    """Batches whose 4 channels have very different spreads (gains 1/std: 10 ... 0.5)."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 0.5, 1.0, 2.0]).view(1, 4, 1, 1)
    return [torch.randn(8, 4, 5, 5, generator=generator) * scale + 3.0 for _ in range(n)]


def eval_slopes(layer: nn.Module, x: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """(C,) the output change per unit input change of each channel, measured."""
    base = layer(x)
    slopes = []
    for c in range(x.shape[1]):
        bumped = x.clone()
        bumped[:, c] += h
        slopes.append(((layer(bumped) - base)[:, c] / h).mean())
    return torch.stack(slopes)


@pytest.mark.parametrize("gamma", [0.5, 3.0, 100.0])
def test_lipschitz_batch_norm_gains_are_at_most_gamma(gamma: float) -> None:
    layer = LipschitzBatchNorm2d(4, gamma=gamma).double()
    plain = nn.BatchNorm2d(4, affine=False).double()
    for x in skewed_batches():
        layer(x.double())
        plain(x.double())
    torch.testing.assert_close(layer.running_var, plain.running_var)  # batch norm's statistics
    layer.eval()
    plain.eval()
    x = skewed_batches(1)[0].double()
    gains = (plain.running_var + plain.eps).rsqrt()  # about 10, 2, 1, 0.5
    expected = gains / max(1.0, gains.max().item() / gamma)
    with torch.no_grad():
        slopes = eval_slopes(layer, x)
        torch.testing.assert_close(slopes, expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(layer.channel_gains(), expected)
        assert slopes.max().item() <= gamma * (1 + 1e-6)
        if gamma >= gains.max():  # within the bound it is batch norm without affine scale
            torch.testing.assert_close(layer(x), plain(x))


def test_lipschitz_batch_norm_in_training_uses_the_batch_variance_and_learns_gamma() -> None:
    layer = LipschitzBatchNorm2d(4, gamma=2.0).double()
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = skewed_batches(1)[0].double()
    out = layer(x)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    gains = (var + layer.eps).rsqrt()  # the batch's gains, about 10 ... 0.5: bound active
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    expected = (x - mean) * (gains / (gains.max() / 2.0)).view(1, 4, 1, 1) + layer.bias.view(
        1, 4, 1, 1
    )
    torch.testing.assert_close(out, expected)
    out.pow(2).sum().backward()
    assert layer.log_gamma.grad is not None and layer.log_gamma.grad.abs() > 0
    assert layer.bias.grad is not None


def test_resnet18_with_lipschitz_batch_norm_from_a_spec() -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 28},
            "model": {"name": "resnet18", "batch_norm": "lipschitz", "bn_gamma": 2.0},
        }
    )
    assert ExperimentSpec.model_validate(spec.model_dump()) == spec
    info = DataInfo((3, 16, 16), 10, (0.5,), (0.25,), tuple(str(k) for k in range(10)))
    torch.manual_seed(0)
    net = create_model(spec.model, info)
    norms = [m for m in net.modules() if isinstance(m, LipschitzBatchNorm2d)]
    assert len(norms) == 20 and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.gamma.item() == pytest.approx(2.0) for m in norms)
    x = torch.rand(4, 3, 16, 16)
    logits = net(x)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    net.eval()
    assert torch.isfinite(net(x)).all()
    standard = model("resnet18", info)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in standard.modules()) == 20


# --------------------------------------------------------------------------- lcnn


def activations(net: nn.Module) -> list[nn.Module]:
    kinds = (nn.ReLU, nn.Tanh, nn.Softplus, CenteredSoftplus)
    return [m for m in net.modules() if isinstance(m, kinds)]


def test_lcnn_setup_swaps_activations_and_batch_norms() -> None:
    info = DataInfo((3, 16, 16), 10, (0.5,), (0.25,), tuple(str(k) for k in range(10)))
    for name, count in (("lenet", 4), ("resnet18", 17)):
        net = model(name, DIGITS_INFO if name == "lenet" else info)
        reg = make("lcnn", beta_init=3.0, beta_weight=0.2, bn_gamma=4.0)
        net = reg.setup(net, DIGITS_INFO if name == "lenet" else info)
        acts = activations(net)
        assert len(acts) == count
        assert all(isinstance(m, CenteredSoftplus) for m in acts)
        assert all(isinstance(m.beta, nn.Parameter) and m.beta.item() == 3.0 for m in acts)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        assert all(hasattr(m, "parametrizations") for m in layers)
        x = torch.rand(2, *(DIGITS_INFO if name == "lenet" else info).input_shape)
        term = reg.penalty(context(net.train(), x))
        assert term.item() == pytest.approx(0.2 * 3.0 * count, rel=1e-6)
    assert all(
        m.gamma.item() == pytest.approx(4.0) for m in net.modules() if hasattr(m, "log_gamma")
    )


def test_lcnn_gamma_term_is_the_reference_log_gamma_penalty() -> None:
    info = DataInfo((3, 16, 16), 10, (0.5,), (0.25,), tuple(str(k) for k in range(10)))
    net = model("resnet18", info)
    reg = make("lcnn", beta_weight=0.1, gamma_weight=0.05, bn_gamma=math.e**2)
    reg.setup(net, info)
    term = reg.penalty(context(net, torch.rand(2, 3, 16, 16)))
    assert term.item() == pytest.approx(0.1 * 5.0 * 17 + 0.05 * 2.0 * 20, rel=1e-6)


def test_lcnn_trains_lenet_on_digits_within_the_bound() -> None:
    result = train(digits_spec([{"name": "lcnn", "beta_weight": 0.01}], epochs=1))
    net = result.model
    acts = activations(net)
    assert len(acts) == 4 and all(isinstance(m, CenteredSoftplus) for m in acts)
    betas = [m.beta.item() for m in acts]
    assert all(beta != 5.0 for beta in betas)  # learned
    row = result.history[-1]
    assert math.isfinite(row["train/loss"]) and row["reg/lcnn"] == pytest.approx(
        0.01 * 5.0 * 4, rel=0.05
    )
    for name, (power, exact) in constrained_norms(net).items():
        assert power <= 1 + TOLERANCE and exact <= 1 + TOLERANCE, name
    term = (
        REGULARIZERS.get("lcnn")
        .target(RegularizerSpec.model_validate({"name": "lcnn", "beta_weight": 0.01}).params)
        .penalty(context(net, torch.rand(2, 1, 28, 28)))
    )
    assert term.item() == pytest.approx(0.01 * sum(betas), rel=1e-6)
