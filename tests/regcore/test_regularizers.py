"""Each regularizer against its formula on a tiny case, with its gradient reaching the
weights (non-zero, and equal to finite differences for the smooth ones)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcore.data.base import DataInfo
from regcore.registries import REGULARIZERS
from regcore.regularizers import Regularizer, StepContext
from regcore.spec import RegularizerSpec

TINY_INFO = DataInfo((1, 4, 4), 3, (0.5,), (0.25,), ("a", "b", "c"))


def tiny_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).to(
        dtype
    )


def batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 4, 4, generator=generator, dtype=dtype)  # (B, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    return x, y


def context(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepContext:
    logits = model(x)  # (B, 3)
    return StepContext(
        model=model, inputs=x, targets=y, logits=logits,
        data_loss=F.cross_entropy(logits, y), epoch=1, step=0,
        steps_per_epoch=1, total_steps=1, lr=0.1,
    )  # fmt: skip


def make(name: str, **params: object) -> Regularizer:
    spec = RegularizerSpec.model_validate({"name": name, **params})
    return REGULARIZERS.get(name).target(spec.params)


def penalty_of(regularizer: Regularizer, model: nn.Module) -> torch.Tensor:
    x, y = batch(next(model.parameters()).dtype)
    term = regularizer.penalty(context(model, x, y))
    assert term is not None
    return term


def assert_gradient_matches_finite_differences(
    model: nn.Module, term: Callable[[], torch.Tensor], entries: int = 6, h: float = 1e-6
) -> None:
    """Autograd's d term / d w against central differences, on a few entries of every weight."""
    model.zero_grad()
    term().backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
        flat, grad = parameter.data.view(-1), parameter.grad.view(-1)
        for index in range(min(entries, flat.numel())):
            original = flat[index].item()
            flat[index] = original + h
            plus = term().item()
            flat[index] = original - h
            minus = term().item()
            flat[index] = original
            numeric = (plus - minus) / (2 * h)
            assert grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_contract_defaults_round_trip_and_one_step(name: str) -> None:
    spec = RegularizerSpec.model_validate({"name": name})
    assert RegularizerSpec.model_validate(spec.model_dump()) == spec
    regularizer = REGULARIZERS.get(name).target(spec.params)
    model = regularizer.setup(tiny_model(torch.float32), TINY_INFO)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(torch.float32)
    x, y = regularizer.transform_batch(x, y)
    if regularizer.needs_input_grad:
        x.requires_grad_(True)
    regularizer.before_forward(model)
    ctx = context(model, x, y)
    term = regularizer.penalty(ctx)
    loss = ctx.data_loss + (term if term is not None else 0)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    regularizer.after_backward(model)
    regularizer.before_step(model, optimizer)
    optimizer.step()
    regularizer.after_step(ctx)
    regularizer.load_state_dict(regularizer.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if term is not None:  # a penalty must carry gradient to the weights
        model.zero_grad()
        regularizer.penalty(context(model, *batch(torch.float32))).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------- l2 / l1 / elastic


def test_l2_value_and_gradient() -> None:
    model = tiny_model()
    reg = make("l2", weight=0.3)
    expected = 0.3 * sum((p**2).sum() for p in model.parameters())
    assert penalty_of(reg, model).item() == pytest.approx(expected.item(), rel=1e-12)
    model.zero_grad()
    penalty_of(reg, model).backward()
    for p in model.parameters():  # d/dw lambda ||w||^2 = 2 lambda w
        torch.testing.assert_close(p.grad, 0.6 * p.detach())
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


def test_l2_can_exclude_biases_and_norm_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    reg = make("l2", weight=1.0, exclude_bias_and_norm=True)
    ctx = context(model, torch.rand(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
    assert reg.penalty(ctx).item() == pytest.approx((model[0].weight ** 2).sum().item())


def test_l2_decoupled_equals_penalty_under_plain_sgd() -> None:
    results = []
    for mode in ("penalty", "decoupled"):
        model = tiny_model()
        reg = make("l2", weight=0.05, mode=mode)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            ctx = context(model, *batch())
            term = reg.penalty(ctx)
            assert (term is None) == (mode == "decoupled")
            optimizer.zero_grad()
            (ctx.data_loss + (term if term is not None else 0)).backward()
            reg.before_step(model, optimizer)
            optimizer.step()
        results.append([p.detach() for p in model.parameters()])
    for penalty_weights, decoupled_weights in zip(*results, strict=True):
        torch.testing.assert_close(penalty_weights, decoupled_weights)


def test_l1_value_and_gradient() -> None:
    model = tiny_model()
    reg = make("l1", weight=0.2)
    expected = 0.2 * sum(p.abs().sum() for p in model.parameters())
    assert penalty_of(reg, model).item() == pytest.approx(expected.item(), rel=1e-12)
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


def test_elastic_net_is_l1_plus_l2() -> None:
    model = tiny_model()
    reg = make("elastic_net", l1_weight=0.2, l2_weight=0.3)
    l1 = sum(p.abs().sum() for p in model.parameters())
    l2 = sum((p**2).sum() for p in model.parameters())
    assert penalty_of(reg, model).item() == pytest.approx((0.2 * l1 + 0.3 * l2).item())
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


# --------------------------------------------------------------------------- label smoothing


def test_label_smoothing_standard_equals_pytorch() -> None:
    model = tiny_model()
    x, y = batch()
    ctx = context(model, x, y)
    term = make("label_smoothing", eps=0.2).penalty(ctx)
    expected = F.cross_entropy(ctx.logits, y, label_smoothing=0.2)
    assert (ctx.data_loss + term).item() == pytest.approx(expected.item(), rel=1e-12)


def test_label_smoothing_study_variant_by_hand() -> None:
    model = tiny_model()
    x, y = batch()
    ctx = context(model, x, y)
    term = make("label_smoothing", eps=0.2, variant="study").penalty(ctx)
    log_p = F.log_softmax(ctx.logits, dim=1).tolist()
    by_hand = 0.0
    for row, label in zip(log_p, y.tolist(), strict=True):
        for k, value in enumerate(row):  # 1 - eps on y, eps / (K - 1) elsewhere
            by_hand -= (0.8 if k == label else 0.2 / 2) * value
    by_hand /= len(log_p)
    assert (ctx.data_loss + term).item() == pytest.approx(by_hand, rel=1e-12)


def test_label_smoothing_gradient_matches_finite_differences() -> None:
    model = tiny_model()
    reg = make("label_smoothing", eps=0.3)
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


# --------------------------------------------------------------------------- confidence penalty


def entropy_by_hand(logits: torch.Tensor) -> list[float]:
    out = []
    for row in logits.tolist():
        z = [math.exp(v) for v in row]
        p = [v / sum(z) for v in z]
        out.append(-sum(q * math.log(q) for q in p))
    return out


def test_confidence_penalty_is_minus_beta_entropy() -> None:
    model = tiny_model()
    x, y = batch()
    ctx = context(model, x, y)
    term = make("confidence_penalty", beta=0.7).penalty(ctx)
    entropies = entropy_by_hand(ctx.logits.detach())
    assert term.item() == pytest.approx(-0.7 * sum(entropies) / len(entropies), rel=1e-12)


@pytest.mark.parametrize("hinge", [None, 5.0])
def test_confidence_penalty_sign_minimizing_raises_entropy(hinge: float | None) -> None:
    """The study's bug (+beta H) would lower the entropy here."""
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 0.5]], dtype=torch.float64)
    logits.requires_grad_(True)
    reg = make("confidence_penalty", beta=1.0, hinge_threshold=hinge)
    y = torch.tensor([0, 1])
    ctx = StepContext(nn.Identity(), logits, y, logits, F.cross_entropy(logits, y), 1, 0, 1, 1, 0.1)
    reg.penalty(ctx).backward()
    before = sum(entropy_by_hand(logits.detach()))
    after = sum(entropy_by_hand((logits - 0.1 * logits.grad).detach()))
    assert after > before


def test_confidence_penalty_hinge_value() -> None:
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    ctx = StepContext(nn.Identity(), logits, y, logits, F.cross_entropy(logits, y), 1, 0, 1, 1, 0.1)
    entropies = entropy_by_hand(logits)
    threshold = 0.5  # only the confident first row is below it
    assert entropies[0] < threshold < entropies[1]
    term = make("confidence_penalty", beta=2.0, hinge_threshold=threshold).penalty(ctx)
    assert term.item() == pytest.approx(2.0 * (threshold - entropies[0]) / 2, rel=1e-12)


def test_confidence_penalty_gradient_matches_finite_differences() -> None:
    model = tiny_model()
    reg = make("confidence_penalty", beta=0.5)
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


# --------------------------------------------------------------------------- noise


def test_input_noise_statistics_and_clamping() -> None:
    torch.manual_seed(0)
    x = torch.full((20000, 1, 2, 2), 0.5)
    y = torch.zeros(20000, dtype=torch.long)
    noisy, same_y = make("input_noise", sigma=0.1, clamp=False).transform_batch(x, y)
    noise = noisy - x
    assert noise.mean().item() == pytest.approx(0.0, abs=2e-3)
    assert noise.std().item() == pytest.approx(0.1, rel=0.02)
    assert same_y is y
    clamped, _ = make("input_noise", sigma=2.0).transform_batch(x, y)
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_weight_noise_gradient_taken_at_noisy_point_and_weights_restored() -> None:
    model = tiny_model()
    clean = [p.detach().clone() for p in model.parameters()]
    reg = make("weight_noise", sigma=0.5, layers=["3"])  # only the Linear layer
    torch.manual_seed(5)
    reg.before_forward(model)
    noisy_linear = model[3].weight.detach().clone()
    assert not torch.equal(noisy_linear, clean[2])  # the linear weight moved
    assert torch.equal(model[0].weight, clean[0])  # the conv did not
    ctx = context(model, *batch())
    ctx.data_loss.backward()
    noisy_grad = model[3].weight.grad.clone()
    reg.after_backward(model)
    for parameter, original in zip(model.parameters(), clean, strict=True):
        assert torch.equal(parameter, original)

    twin = tiny_model()  # the same gradient, computed directly at the noisy weights
    with torch.no_grad():
        twin[3].weight.copy_(noisy_linear)
    context(twin, *batch()).data_loss.backward()
    torch.testing.assert_close(noisy_grad, twin[3].weight.grad)


def test_weight_noise_needs_a_matching_layer() -> None:
    with pytest.raises(ValueError, match="no conv/linear layer matches"):
        make("weight_noise", layers=["nothing*"]).before_forward(tiny_model())


def test_weight_noise_reaches_layers_under_a_spectral_bound() -> None:
    """Under a parametrization the weight is recomputed from the original at every access,
    so noise written into ``module.weight`` would be lost."""
    model = make("spectral_norm", gamma=1.0).setup(tiny_model(torch.float32), TINY_INFO)
    linear = model[3]
    clean = linear.weight.detach().clone()
    noise = make("weight_noise", sigma=0.5, layers=["3"])
    noise.before_forward(model)
    assert not torch.allclose(linear.weight, clean)  # the computed weight sees the noise
    noise.after_backward(model)
    torch.testing.assert_close(linear.weight, clean)
