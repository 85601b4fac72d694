"""Input units (``input_space: pixel | normalized``) of the jacobian penalty and of geometry.

Normalized means derivatives with respect to the model's normalized input
z = (x - mean) / std. With x = mean + std * z, per channel d/dz = std * d/dx: on a
one-channel model ||J||_F and ||g|| scale by std, ||J||_F^2, the penalty and ||H||_2 by
std^2. Each is checked against a direct computation on the composed function
z -> model(mean + std * z), not against those factors alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcore.analysis.base import AnalysisContext
from regcore.analysis.geometry import GeometryAnalysis, GeometryParams
from regcore.data.base import DataInfo, DataSplits, Split
from regcore.jacobian import (
    in_input_space,
    input_normalizer,
    mean_frobenius_norm,
    pixel_gradient_to_normalized,
)
from regcore.models.layers import Normalize
from tests.regcore.test_jacobian import check_gradient_against_finite_differences
from tests.regcore.test_regularizers import context, make

MEAN, STD = 0.1307, 0.3081  # MNIST's, one channel


def stored_std(model: nn.Module) -> float:
    """The std the model's Normalize holds (0.3081 rounded to float32)."""
    return input_normalizer(model, "test").std.flatten()[0].item()


def normalized_model(
    mean: tuple[float, ...] = (MEAN,), std: tuple[float, ...] = (STD,)
) -> nn.Module:
    """A tiny conv net on (C, 4, 4) inputs that normalizes inside, as regcore's models do."""
    torch.manual_seed(0)
    channels = len(mean)
    return nn.Sequential(
        Normalize(mean, std, (channels, 4, 4)),
        nn.Conv2d(channels, 2, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ).double()


def inputs(channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, channels, 4, 4, generator=generator, dtype=torch.float64)  # (B, C, 4, 4)
    return x, torch.tensor([0, 1, 2, 1, 0])


def direct_jacobians(model: nn.Module, x: torch.Tensor, space: str) -> torch.Tensor:
    """(B, C, D) per-sample Jacobians by torch.autograd.functional.jacobian, of the model
    (pixel) or of z -> model(mean + std * z) written out here (normalized)."""
    normalizer = model[0]
    rows = []
    for b in range(len(x)):
        if space == "pixel":
            jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[b])
        else:
            z = (x[b] - normalizer.mean) / normalizer.std
            jac = torch.autograd.functional.jacobian(
                lambda v: model((normalizer.mean + normalizer.std * v)[None])[0], z
            )
        rows.append(jac.reshape(jac.shape[0], -1))  # (C, D)
    return torch.stack(rows)


def exact_penalty(model: nn.Module, x: torch.Tensor, space: str, weight: float) -> float:
    jacobians = direct_jacobians(model, x, space)
    return float(0.5 * weight * jacobians.pow(2).sum(dim=(1, 2)).mean())


# --------------------------------------------------------------------------- the penalty


@pytest.mark.parametrize("subsample", [None, 5])  # 5 >= B: the whole batch, its own forward
@pytest.mark.parametrize("space", ["pixel", "normalized"])
def test_exact_penalty_equals_the_direct_formula_in_both_spaces(
    space: str, subsample: int | None
) -> None:
    model = normalized_model()
    x, y = inputs()
    reg = make("jacobian", weight=0.3, n_proj=-1, subsample=subsample, input_space=space)
    term = reg.penalty(context(model, x.clone().requires_grad_(True), y))
    assert term is not None
    assert term.item() == pytest.approx(exact_penalty(model, x, space, 0.3), rel=1e-10)


def test_normalized_penalty_is_std_squared_times_the_pixel_one_on_one_channel() -> None:
    model = normalized_model()
    x, y = inputs()
    terms = {}
    for space in ("pixel", "normalized"):
        reg = make("jacobian", weight=0.01, n_proj=-1, input_space=space)
        terms[space] = reg.penalty(context(model, x.clone().requires_grad_(True), y)).item()
    assert terms["normalized"] / terms["pixel"] == pytest.approx(stored_std(model) ** 2, rel=1e-10)


def test_random_projection_in_normalized_space_is_std_squared_times_pixel_for_the_same_draw() -> (
    None
):
    model = normalized_model()
    x, y = inputs()
    terms = {}
    for space in ("pixel", "normalized"):
        torch.manual_seed(7)  # the same projections in both spaces
        reg = make("jacobian", weight=0.01, n_proj=1, input_space=space)
        terms[space] = reg.penalty(context(model, x.clone().requires_grad_(True), y)).item()
    assert terms["normalized"] / terms["pixel"] == pytest.approx(stored_std(model) ** 2, rel=1e-10)


@pytest.mark.parametrize("subsample", [None, 5])
def test_normalized_penalty_trains_every_weight_and_matches_finite_differences(
    subsample: int | None,
) -> None:
    model = normalized_model()
    x, y = inputs()
    reg = make("jacobian", weight=0.7, n_proj=-1, subsample=subsample, input_space="normalized")

    def term() -> torch.Tensor:
        value = reg.penalty(context(model, x.clone().requires_grad_(True), y))
        assert value is not None
        return value

    norms = check_gradient_against_finite_differences(model, term)
    for name in ("1.weight", "1.bias", "4.weight"):
        assert norms[name] > 0, name
    assert norms["4.bias"] == 0  # J does not depend on the last layer's bias


def test_per_channel_statistics_scale_each_channel_by_its_own_std() -> None:
    std = (0.25, 0.5)
    model = normalized_model(mean=(0.4, 0.6), std=std)
    x, y = inputs(channels=2)
    reg = make("jacobian", weight=1.0, n_proj=-1, input_space="normalized")
    term = reg.penalty(context(model, x.clone().requires_grad_(True), y))
    assert term is not None
    assert term.item() == pytest.approx(exact_penalty(model, x, "normalized", 1.0), rel=1e-10)
    pixel = direct_jacobians(model, x, "pixel").view(5, 3, 2, 16)  # (B, C, channel, pixel)
    scaled = pixel * torch.tensor(std, dtype=torch.float64).view(1, 1, 2, 1)
    assert term.item() == pytest.approx(float(0.5 * scaled.pow(2).sum(dim=(1, 2, 3)).mean()))


def test_pixel_gradient_to_normalized_stays_in_the_graph() -> None:
    normalizer = Normalize((MEAN,), (STD,), (1, 4, 4)).double()
    x, _ = inputs()
    u = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    u_z = pixel_gradient_to_normalized(normalizer, x, u)
    assert torch.allclose(u_z, STD * u)
    (grad,) = torch.autograd.grad(u_z.sum(), u)
    assert torch.allclose(grad, torch.full_like(u, STD))


def test_normalized_space_without_an_input_normalization_is_an_error_naming_the_field() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    reg = make("jacobian", input_space="normalized")
    info = DataInfo((1, 4, 4), 3, (MEAN,), (STD,), ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"jacobian: input_space 'normalized'.*normalize: true"):
        reg.setup(model, info)
    assert make("jacobian").setup(model, info) is model  # pixel needs nothing
    with pytest.raises(ValueError, match="geometry: input_space"):
        input_normalizer(model, "geometry")


def test_regbench_lenet_normalized_frobenius_is_std_times_pixel() -> None:
    from regcore.models import create_model
    from regcore.spec import ModelSpec

    info = DataInfo((1, 28, 28), 10, (MEAN,), (STD,), tuple("0123456789"))
    model = create_model(ModelSpec.model_validate({"name": "lenet"}), info).double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    composed, to_input = in_input_space(model, "normalized", "test")
    pixel = mean_frobenius_norm(model, x)
    expected = stored_std(model) * pixel
    assert mean_frobenius_norm(composed, to_input(x)) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- geometry


def geometry(space: str, tmp_path: Path) -> dict[str, float]:
    model = normalized_model().eval()
    info = DataInfo((1, 4, 4), 3, (MEAN,), (STD,), ("a", "b", "c"))
    generator = torch.Generator().manual_seed(2)
    split = Split(
        torch.rand(30, 1, 4, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (30,), generator=generator),
    )
    ctx = AnalysisContext(
        model, DataSplits(split, None, split, info), torch.device("cpu"), tmp_path / space
    )
    params = GeometryParams(samples=30, batch_size=7, iterations=50, input_space=space)
    return GeometryAnalysis(params).run(ctx).metrics


def test_geometry_in_normalized_units_is_std_and_std_squared_times_pixel(tmp_path: Path) -> None:
    pixel, normalized = geometry("pixel", tmp_path), geometry("normalized", tmp_path)
    assert set(pixel) == set(normalized)  # the metric names do not change
    for name, power in [("grad_norm", 1), ("jacobian_frobenius", 1), ("hessian_norm", 2)]:
        ratio = normalized[f"geometry/{name}_mean"] / pixel[f"geometry/{name}_mean"]
        assert ratio == pytest.approx(stored_std(normalized_model()) ** power, rel=1e-6), name


def test_geometry_normalized_gradient_equals_autograd_on_the_composed_function(
    tmp_path: Path,
) -> None:
    metrics = geometry("normalized", tmp_path)
    model = normalized_model().eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(30, 1, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=generator)
    mean, std = model[0].mean, model[0].std
    z = ((x - mean) / std).requires_grad_(True)
    losses = F.cross_entropy(model(mean + std * z), y, reduction="none")
    (grads,) = torch.autograd.grad(losses.sum(), z)
    expected = grads.flatten(1).norm(dim=1).mean()
    assert metrics["geometry/grad_norm_mean"] == pytest.approx(expected.item(), rel=1e-10)


def test_geometry_normalized_without_an_input_normalization_fails(tmp_path: Path) -> None:
    info = DataInfo((6,), 3, (0.5,) * 6, (0.25,) * 6, ("a", "b", "c"))
    split = Split(torch.rand(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,)))
    model = nn.Sequential(nn.Linear(6, 3)).double().eval()
    ctx = AnalysisContext(
        model, DataSplits(split, None, split, info), torch.device("cpu"), tmp_path
    )
    with pytest.raises(ValueError, match="geometry: input_space 'normalized'"):
        GeometryAnalysis(GeometryParams(samples=10, input_space="normalized")).run(ctx)


def test_input_space_counts_for_the_spec_hash_only_when_normalized() -> None:
    from regcore.spec import ExperimentSpec

    def spec_hash(jacobian: dict[str, object], geometry: dict[str, object]) -> str:
        return ExperimentSpec.model_validate(
            {
                "dataset": {"name": "digits"},
                "model": {"name": "lenet"},
                "regularizers": [{"name": "jacobian", **jacobian}],
                "analyses": [{"kind": "geometry", **geometry}],
            }
        ).spec_hash()

    before = spec_hash({}, {})  # a spec written before input_space existed
    assert spec_hash({"input_space": "pixel"}, {"input_space": "pixel"}) == before
    assert spec_hash({"input_space": "normalized"}, {}) != before
    assert spec_hash({}, {"input_space": "normalized"}) != before


@pytest.mark.slow
def test_stacked_members_with_a_normalized_penalty_equal_separate_runs() -> None:
    """Seeds trained stacked take the members' products in one backward pass; each member
    maps its own to normalized units with its own model's statistics."""
    from regcore.stacked import stack_key, train_stacked
    from regcore.train import train
    from tests.regcore.test_stacked import assert_same_run, make_spec, probe_inputs

    specs = [
        make_spec(seed, [{"name": "jacobian", "weight": w, "input_space": "normalized"}])
        for seed, w in ((0, 0.1), (1, 0.2))
    ]
    assert stack_key(specs[0]) == stack_key(specs[1]) is not None
    for spec, result in zip(specs, train_stacked(specs), strict=True):
        assert_same_run(result, train(spec), rtol=1e-4, atol=1e-5, probe=probe_inputs(spec))
