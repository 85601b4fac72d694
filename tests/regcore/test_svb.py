"""Singular value bounding: the soft penalty against its formula (both Gram sides), the
hard projection's band, schedule, layer selection, bounded batch norm and resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import regcore.train
from regcore.regularizers import StepContext
from regcore.regularizers.svb_hard import SVBHard
from regcore.spec import ExperimentSpec, RegularizerSpec
from regcore.train import Callbacks, load_checkpoint, train
from tests.regcore.test_regularizers import (
    TINY_INFO,
    assert_gradient_matches_finite_differences,
    batch,
    context,
    make,
    penalty_of,
)


def mixed_model(dtype: torch.dtype = torch.float64, bias: bool = True) -> nn.Sequential:
    """Both Gram sides: W0 (12, 9) has out > in*k*k, W2 (4, 12) and W4 (3, 16) out < in."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, bias=bias),  # (B, 12, 2, 2)
        nn.Tanh(),
        nn.Conv2d(12, 4, 1, bias=bias),  # (B, 4, 2, 2)
        nn.Flatten(),
        nn.Linear(16, 3, bias=bias),  # (B, 3)
    ).to(dtype)


WEIGHT_LAYERS = (0, 2, 4)


def matrix(model: nn.Module, index: int) -> torch.Tensor:
    weight = model[index].weight.detach()
    return weight.reshape(weight.shape[0], -1)  # (out, in*k*k)


def defect_by_hand(w: torch.Tensor, larger: bool = False) -> float:
    """||G - I||_F^2 with the Gram G built explicitly on the requested side."""
    out, n = w.shape
    rows_side = (out <= n) != larger  # smaller side: W W^T when out <= n
    gram = w @ w.T if rows_side else w.T @ w
    return ((gram - torch.eye(gram.shape[0], dtype=w.dtype)) ** 2).sum().item()


def at_step(model: nn.Module, step: int, steps_per_epoch: int = 1) -> StepContext:
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        ctx = context(model, *batch(dtype))
    return replace(ctx, step=step, steps_per_epoch=steps_per_epoch)


def singular_values(model: nn.Module, index: int) -> torch.Tensor:
    return torch.linalg.svdvals(matrix(model, index))


def assert_in_band(model: nn.Module, indices: tuple[int, ...], eps: float) -> None:
    for index in indices:
        s = singular_values(model, index)
        assert s.min().item() >= 1 / (1 + eps) - 1e-5, index
        assert s.max().item() <= 1 + eps + 1e-5, index


# --------------------------------------------------------------------------- svb_soft


def test_soft_value_equals_the_formula_on_both_gram_sides() -> None:
    model = mixed_model()
    shapes = [tuple(matrix(model, i).shape) for i in WEIGHT_LAYERS]
    assert shapes == [(12, 9), (4, 12), (3, 16)]  # out > n once, out < n twice
    for gram, larger in (("smaller", False), ("study_larger", True)):
        reg = make("svb_soft", weight=0.3, gram=gram, orthogonal_init=False)
        expected = 0.3 * sum(defect_by_hand(matrix(model, i), larger) for i in WEIGHT_LAYERS)
        assert penalty_of(reg, model).item() == pytest.approx(expected, rel=1e-12)
    only_first = make("svb_soft", weight=1.0, layers=["0"], orthogonal_init=False)
    assert penalty_of(only_first, model).item() == pytest.approx(
        defect_by_hand(matrix(model, 0)), rel=1e-12
    )


def test_soft_is_zero_after_its_orthogonal_init_and_the_study_variant_has_a_floor() -> None:
    reg = make("svb_soft", weight=1.0)
    model = reg.setup(mixed_model(), TINY_INFO)
    assert 0 <= penalty_of(reg, model).item() <= 1e-10
    study = make("svb_soft", weight=1.0, gram="study_larger")
    floor = sum(abs(out - n) for out, n in ((12, 9), (4, 12), (3, 16)))  # R - r per layer
    assert floor > 0
    assert penalty_of(study, model).item() == pytest.approx(floor, abs=1e-9)
    by_hand = sum(defect_by_hand(matrix(model, i), larger=True) for i in WEIGHT_LAYERS)
    assert by_hand == pytest.approx(floor, abs=1e-9)


def test_soft_gradient_matches_finite_differences_and_both_grams_share_it() -> None:
    model = mixed_model(bias=False)  # every parameter is a weight the penalty sees
    reg = make("svb_soft", weight=0.5, orthogonal_init=False)
    assert_gradient_matches_finite_differences(model, lambda: penalty_of(reg, model))
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    penalty_of(make("svb_soft", weight=0.5, gram="study_larger"), model).backward()
    for grad, parameter in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, grad)  # the floor is a constant


# --------------------------------------------------------------------------- svb_hard


@pytest.mark.parametrize("name", ["svb_soft", "svb_hard"])
def test_orthogonal_init_gives_unit_singular_values(name: str) -> None:
    model = make(name).setup(mixed_model(), TINY_INFO)
    for index in WEIGHT_LAYERS:
        s = singular_values(model, index)
        assert len(s) == min(matrix(model, index).shape)
        torch.testing.assert_close(s, torch.ones_like(s), rtol=0, atol=1e-10)


def test_hard_projects_exactly_every_3_steps_into_the_band() -> None:
    eps = 0.1
    reg = make("svb_hard", eps=eps, every_steps=3)
    model = reg.setup(mixed_model(torch.float32), TINY_INFO)
    projected_after: list[int] = []
    for step in range(10):  # 4 steps per epoch: every_steps overrides the epoch
        with torch.no_grad():  # stand-in for optimizer steps that leave the band
            for index in WEIGHT_LAYERS:
                weight = model[index].weight
                weight.mul_(1.5).add_(0.1 * torch.randn_like(weight))
        before = [model[i].weight.detach().clone() for i in WEIGHT_LAYERS]
        assert max(singular_values(model, i).max().item() for i in WEIGHT_LAYERS) > 1 + eps
        count = reg.projections
        reg.after_step(at_step(model, step, steps_per_epoch=4))
        if reg.projections > count:
            projected_after.append(step + 1)
            assert_in_band(model, WEIGHT_LAYERS, eps)
        else:
            for index, weight in zip(WEIGHT_LAYERS, before, strict=True):
                assert torch.equal(model[index].weight, weight)
        assert model[0].weight.dtype == torch.float32
    assert projected_after == [3, 6, 9]
    assert reg.state_dict() == {"projections": 3}


def test_hard_leaves_unselected_layers_untouched() -> None:
    reg = make("svb_hard", eps=0.1, every_steps=1, layers=["2"])
    model = mixed_model()
    original = {i: model[i].weight.detach().clone() for i in WEIGHT_LAYERS}
    reg.setup(model, TINY_INFO)
    assert not torch.equal(model[2].weight, original[2])  # orthogonal init: selected only
    with torch.no_grad():
        for index in WEIGHT_LAYERS:
            model[index].weight.mul_(3.0)
    scaled = {i: model[i].weight.detach().clone() for i in WEIGHT_LAYERS}
    reg.after_step(at_step(model, 0))
    assert reg.projections == 1
    assert_in_band(model, (2,), 0.1)
    for index in (0, 4):
        assert torch.equal(model[index].weight, scaled[index])
        assert torch.equal(scaled[index], 3.0 * original[index])
    with pytest.raises(ValueError, match="no conv/linear layer matches"):
        make("svb_hard", layers=["nothing*"]).setup(mixed_model(), TINY_INFO)


@pytest.mark.parametrize("eps_bn", [0.2, None])
def test_bounded_batchnorm_puts_every_gain_in_its_band(eps_bn: float | None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3)
    ).double()
    reg = make("svb_hard", bound_batchnorm=True, eps=0.5, eps_bn=eps_bn, every_steps=1)
    reg.setup(model, TINY_INFO)
    ctx = at_step(model, 0)  # the forward updates running stats: set them afterwards
    bn = model[1]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, 1.0, 5.0, 2.0]))
        bn.running_var.copy_(torch.tensor([0.01, 1.0, 4.0, 100.0]))
    std = (bn.running_var + bn.eps).sqrt()
    gain = bn.weight.detach() / std  # r ~ (1, 1, 2.5, 0.2)
    m, e = gain.mean().item(), 0.5 if eps_bn is None else eps_bn
    low, high = m / (1 + e), m * (1 + e)
    inside = (gain >= low) & (gain <= high)
    assert inside.any() and not inside.all()  # the test really clips something
    running_var = bn.running_var.clone()
    reg.after_step(ctx)
    bounded = bn.weight.detach() / std
    assert bounded.min().item() >= low - 1e-12 and bounded.max().item() <= high + 1e-12
    torch.testing.assert_close(bounded[inside], gain[inside])  # in-band gains unchanged
    # the others land on the nearer edge
    torch.testing.assert_close(bounded[~inside], gain[~inside].clamp(low, high))
    assert torch.equal(bn.running_var, running_var)


def test_bounded_batchnorm_needs_a_batchnorm_layer() -> None:
    with pytest.raises(ValueError, match="no batch norm layer"):
        make("svb_hard", bound_batchnorm=True).setup(mixed_model(), TINY_INFO)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("svb_soft", {"weight": -1.0}),
        ("svb_soft", {"gram": "larger"}),
        ("svb_hard", {"eps": -0.1}),
        ("svb_hard", {"every_steps": 0}),
        ("svb_hard", {"eps_bn": -1.0}),
    ],
)
def test_bad_params_are_validation_errors(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RegularizerSpec.model_validate({"name": name, **params})


# --------------------------------------------------------------------------- in training


def digits_spec(epochs: int = 3) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 8, "train_size": 400, "test_size": 100},
            "model": {"name": "mlp", "hidden": [32]},
            "regularizers": [{"name": "svb_hard"}],
            "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1, "device": "cpu"},
        }
    )


def test_hard_default_projects_at_each_epoch_end_in_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[dict[str, Any]] = []
    build = regcore.train.build_regularizers

    def capture(specs: Any) -> dict[str, Any]:
        built.append(build(specs))
        return built[-1]

    monkeypatch.setattr(regcore.train, "build_regularizers", capture)
    seen: list[tuple[int, int, int, int]] = []

    def on_step(epoch: int, step: int, steps_per_epoch: int) -> None:
        seen.append((epoch, step, steps_per_epoch, built[0]["svb_hard"].projections))

    result = train(digits_spec(), workdir=tmp_path, callbacks=Callbacks(on_step=on_step))
    assert isinstance(built[0]["svb_hard"], SVBHard)
    steps_per_epoch = seen[0][2]
    assert steps_per_epoch == 7 and len(seen) == 3 * steps_per_epoch  # 400 in batches of 64
    for epoch, step, _, count in seen:  # one more projection exactly after each last step
        assert count == epoch - 1 + (step == steps_per_epoch), (epoch, step)
    assert load_checkpoint(tmp_path / "last.pt")["regularizers"]["svb_hard"] == {"projections": 3}
    for layer in (result.model.hidden[0], result.model.out):
        s = torch.linalg.svdvals(layer.weight.detach())
        assert s.min().item() >= 1 / 1.5 - 1e-5 and s.max().item() <= 1.5 + 1e-5


def test_hard_resume_keeps_the_counter_and_the_weights(tmp_path: Path) -> None:
    spec = digits_spec()
    straight = train(spec, workdir=tmp_path / "straight")
    epochs: list[int] = []
    stop_after_two = Callbacks(
        on_epoch=lambda epoch, _: epochs.append(epoch), should_cancel=lambda: len(epochs) >= 2
    )
    with pytest.raises(regcore.train.TrainingCancelledError):
        train(spec, workdir=tmp_path / "resumed", callbacks=stop_after_two)
    stopped = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert stopped["regularizers"]["svb_hard"] == {"projections": 2}
    resumed = train(spec, workdir=tmp_path / "resumed")
    assert resumed.resumed_from_epoch == 2
    final = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert final["regularizers"]["svb_hard"] == {"projections": 3}
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
