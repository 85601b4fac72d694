"""Adversarial training and CURE against their formulas on a tiny model, with gradients
reaching the weights, and each raising PGD accuracy on digits over its unregularized
twin (same seed, same epochs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcore.attacks.pgd import pgd
from regcore.data import load_dataset
from regcore.spec import ExperimentSpec
from regcore.train import evaluate, train
from tests.regcore.test_regularizers import (
    assert_gradient_matches_finite_differences,
    batch,
    context,
    make,
    penalty_of,
    tiny_model,
)

# --------------------------------------------------------------------------- adversarial training


@pytest.mark.parametrize("mix", [1.0, 0.5, 0.2])
def test_adversarial_training_is_the_mixed_objective(mix: float) -> None:
    model = tiny_model()
    x, y = batch()
    reg = make("adversarial_training", eps=0.1, steps=3, mix=mix)
    ctx = context(model, x, y)
    torch.manual_seed(3)  # the same random start for the term and for the check
    term = reg.penalty(ctx)
    torch.manual_seed(3)
    x_adv = pgd(model, x, y, eps=0.1, steps=3)  # (B, 1, 4, 4)
    assert (x_adv - x).abs().max().item() > 0.05  # a real attack, not x itself
    clean, adversarial = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert adversarial.item() > clean.item()
    expected = (1 - mix) * clean + mix * adversarial
    assert (ctx.data_loss + term).item() == pytest.approx(expected.item(), rel=1e-12)


def test_adversarial_training_gradient_is_the_mixed_objectives_at_fixed_x_adv() -> None:
    """Danskin: the gradient is taken at x_adv, with no gradient through the attack."""
    mix = 0.7
    model = tiny_model()
    x, y = batch()
    reg = make("adversarial_training", eps=0.2, steps=4, mix=mix, random_start=False)
    ctx = context(model, x, y)
    model.zero_grad()
    (ctx.data_loss + reg.penalty(ctx)).backward()
    got = [p.grad.clone() for p in model.parameters()]
    assert all(g.abs().sum() > 0 for g in got)

    x_adv = pgd(model, x, y, eps=0.2, steps=4, random_start=False)
    model.zero_grad()
    ((1 - mix) * F.cross_entropy(model(x), y) + mix * F.cross_entropy(model(x_adv), y)).backward()
    for mine, direct in zip(got, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(mine, direct, rtol=1e-12, atol=1e-14)


def test_adversarial_training_with_mix_zero_adds_nothing() -> None:
    model = tiny_model()
    term = make("adversarial_training", mix=0.0).penalty(context(model, *batch()))
    assert term.item() == 0.0


def test_adversarial_training_keeps_the_models_training_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.double().train()
    x, y = batch()
    term = make("adversarial_training", eps=0.1).penalty(context(model, x, y))
    assert model.training and all(m.training for m in model.modules())
    assert torch.isfinite(term)


# --------------------------------------------------------------------------- cure


def cure_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float) -> float:
    """weight-free CURE, one sample at a time: mean_b ||g_b(x_b + h z_b) - g_b(x_b)||^2."""

    def grad_of(point: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        point = point.clone().requires_grad_(True)
        loss = F.cross_entropy(model(point), label)  # one sample: mean = its own loss
        return torch.autograd.grad(loss, point)[0]

    total = 0.0
    for b in range(x.shape[0]):
        xb, yb = x[b : b + 1], y[b : b + 1]
        g = grad_of(xb, yb)
        z = g.sign() / g.sign().norm()
        total += (grad_of(xb + h * z, yb) - g).pow(2).sum().item()
    return total / x.shape[0]


@pytest.mark.parametrize("h", [0.1, 1.5])
def test_cure_value_equals_a_per_sample_computation(h: float) -> None:
    model = tiny_model()
    x, y = batch()
    term = make("cure", weight=2.5, h=h).penalty(context(model, x, y))
    by_hand = cure_by_hand(model, x, y, h)
    assert by_hand > 0
    assert term.item() == pytest.approx(2.5 * by_hand, rel=1e-10)


def test_cure_gradient_matches_finite_differences() -> None:
    """z = sign(grad)/||sign(grad)|| is piecewise constant in the weights, so the detached-z
    convention is the exact derivative: plain finite differences of the penalty agree."""
    model = tiny_model()
    reg = make("cure", weight=3.0, h=0.5)
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))


def test_cure_is_computed_in_eval_mode_and_restores_the_mode() -> None:
    """With dropout active the two gradients would see different masks; in eval mode the
    penalty is deterministic."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Dropout(0.5))
    model.append(nn.Linear(8, 3)).double().train()
    x, y = batch()
    reg = make("cure", h=0.5)
    first = reg.penalty(context(model, x, y)).item()
    second = reg.penalty(context(model, x, y)).item()
    assert first == second > 0
    assert all(m.training for m in model.modules())
    model.eval()
    assert first == pytest.approx(4.0 * cure_by_hand(model, x, y, 0.5), rel=1e-10)


def test_cure_leaves_the_loops_inputs_alone_and_survives_a_zero_gradient() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        model[1].weight.zero_()  # grad_x = 0 everywhere: z = 0, not nan
    x, y = batch()
    x.requires_grad_(True)
    term = make("cure").penalty(context(model, x, y))
    assert term.item() == 0.0
    assert x.grad is None


# --------------------------------------------------------------------------- robustness on digits


def digits_spec(regularizers: list[dict[str, object]]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 8, "val_fraction": 0.0},
            "model": {"name": "mlp", "hidden": [64]},
            "regularizers": regularizers,
            "training": {"epochs": 15, "batch_size": 64, "lr": 0.05, "seed": 0, "device": "cpu"},
        }
    )


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=eps, steps=10)
    with torch.no_grad():
        return (model.eval()(x_adv).argmax(dim=1) == y).double().mean().item()


@pytest.fixture(scope="module")
def baseline() -> tuple[float, float]:
    """(clean, PGD Linf 0.1) test accuracy of the unregularized MLP on 8x8 digits."""
    spec = digits_spec([])
    data = load_dataset(spec.dataset, spec.training.seed)
    model = train(spec, data).model
    return evaluate(model, data.test)[1], robust_accuracy(model, data.test.x, data.test.y, 0.1)


@pytest.mark.parametrize(
    ("regularizer", "margin"),
    [
        # measured (seed 0): clean 0.981 -> 0.983, PGD 0.552 -> 0.825; seeds 1, 2: +0.26, +0.23
        ({"name": "adversarial_training", "eps": 0.1}, 0.15),
        # measured (seed 0): clean 0.981 -> 0.936, PGD 0.552 -> 0.797; seeds 1, 2: +0.20, +0.22
        ({"name": "cure", "h": 0.8}, 0.1),
    ],
)
def test_robust_training_raises_pgd_accuracy_over_its_unregularized_twin(
    baseline: tuple[float, float], regularizer: dict[str, object], margin: float
) -> None:
    spec = digits_spec([regularizer])
    data = load_dataset(spec.dataset, spec.training.seed)
    result = train(spec, data)
    clean = evaluate(result.model, data.test)[1]
    robust = robust_accuracy(result.model, data.test.x, data.test.y, 0.1)
    base_clean, base_robust = baseline
    name = regularizer["name"]
    print(f"{name}: clean {base_clean:.3f} -> {clean:.3f}, PGD {base_robust:.3f} -> {robust:.3f}")
    assert robust >= base_robust + margin
    assert clean >= 0.9  # robustness is not bought with a broken classifier
    assert result.history[-1][f"reg/{name}"] > 0
