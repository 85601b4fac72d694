from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from regcore.analysis.base import AnalysisContext
from regcore.analysis.geometry import (
    CHECK_EVERY,
    GeometryAnalysis,
    GeometryParams,
    hessian_spectral_norm,
    lanczos_hessian_norm,
)
from regcore.data.base import DataInfo, DataSplits, Split


def quadratic(matrix: torch.Tensor, shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """l_b(x) = 1/2 x_b^T A x_b + c . x_b: Hessian A for every sample, gradient A x + c."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)  # (B, D)
        return 0.5 * ((flat @ matrix) * flat).sum(dim=1) + flat @ shift

    return loss


@pytest.mark.parametrize("eigenvalues", [[5.0, -3.0, 1.0, 0.5], [-6.0, 2.0, 1.0, 0.1]])
def test_lanczos_finds_the_top_eigenvalue_of_a_known_hessian(
    eigenvalues: list[float],
) -> None:
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
    matrix = basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T
    shift = torch.randn(4, generator=generator, dtype=torch.float64)
    x = torch.randn(6, 2, 2, generator=generator, dtype=torch.float64)  # (B, 2, 2) -> D = 4
    grad_norm, hessian_norm = hessian_spectral_norm(
        quadratic(matrix, shift), x, iterations=50, generator=generator
    )
    top = max(abs(v) for v in eigenvalues)
    assert hessian_norm.tolist() == pytest.approx([top] * 6, rel=0.01)
    expected_grad = (x.flatten(1) @ matrix + shift).norm(dim=1)
    torch.testing.assert_close(grad_norm, expected_grad)


def test_gradient_norms_equal_autograd_per_sample_for_a_network() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])

    def loss(inputs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(inputs), y, reduction="none")

    grad_norm, hessian_norm = hessian_spectral_norm(loss, x, iterations=30)
    for b in range(4):
        xb = x[b : b + 1].clone().requires_grad_(True)
        lb = torch.nn.functional.cross_entropy(model(xb), y[b : b + 1])
        (g,) = torch.autograd.grad(lb, xb)
        assert grad_norm[b].item() == pytest.approx(g.norm().item(), rel=1e-5)
        hessian = torch.autograd.functional.hessian(
            lambda v, b=b: torch.nn.functional.cross_entropy(model(v[None]), y[b : b + 1]), x[b]
        )
        top = torch.linalg.eigvalsh(hessian).abs().max().item()
        assert hessian_norm[b].item() == pytest.approx(top, rel=0.01)


def test_geometry_analysis_reports_batched_means(tmp_path: Path) -> None:
    torch.manual_seed(1)
    info = DataInfo((6,), 3, (0.5,) * 6, (0.25,) * 6, ("a", "b", "c"))
    split = Split(torch.rand(50, 6, dtype=torch.float64), torch.randint(0, 3, (50,)))
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double().eval()
    ctx = AnalysisContext(
        model, DataSplits(split, None, split, info), torch.device("cpu"), tmp_path
    )
    params = GeometryParams(samples=50, batch_size=7, iterations=30, tolerance=1e-10)
    result = GeometryAnalysis(params).run(ctx)

    x = split.x.clone().requires_grad_(True)
    losses = torch.nn.functional.cross_entropy(model(x), split.y, reduction="none")
    (grads,) = torch.autograd.grad(losses.sum(), x)
    assert result.metrics["geometry/grad_norm_mean"] == pytest.approx(grads.norm(dim=1).mean())
    jacobians = torch.stack(
        [torch.autograd.functional.jacobian(model, split.x[b]) for b in range(50)]
    )  # (N, C, D)
    frobenius = jacobians.flatten(1).norm(dim=1)
    assert result.metrics["geometry/jacobian_frobenius_mean"] == pytest.approx(frobenius.mean())
    assert result.metrics["geometry/curvature_mean"] > 0
    hessians = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda v, b=b: torch.nn.functional.cross_entropy(
                    model(v[None]), split.y[b : b + 1]
                ),
                split.x[b],
            )
            for b in range(50)
        ]
    )  # (N, D, D)
    exact = torch.linalg.eigvalsh(hessians).abs().amax(dim=1)  # (N,)
    assert result.metrics["geometry/hessian_norm_mean"] == pytest.approx(
        exact.mean().item(), rel=1e-9
    )
    assert result.metrics["geometry/hessian_converged_fraction"] == 1.0
    assert 1 <= result.metrics["geometry/hessian_iterations_mean"] <= 6  # D = 6 steps span R^6
    assert (tmp_path / "geometry" / "samples.csv").read_text().count("\n") == 51


def rotated(eigenvalues: list[float], generator: torch.Generator) -> torch.Tensor:
    """(D, D) symmetric matrix Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T


def exact_spectral_norms(
    loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """(B,) ||H_b||_2 of (B, D) inputs from the full Hessian of l_b (autograd) and eigvalsh."""
    hessians = torch.stack(
        [torch.autograd.functional.hessian(lambda v: loss(v[None])[0], x[b]) for b in range(len(x))]
    )  # (B, D, D)
    return torch.linalg.eigvalsh(hessians).abs().amax(dim=1)


def power_iteration_20(
    loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The estimate regcore used before Lanczos: 20 power steps, then |u^T H u|."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x).sum(), x, create_graph=True)  # (B, D)
    u = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    u = u / u.norm(dim=1, keepdim=True)
    for _ in range(20):
        (hu,) = torch.autograd.grad((grad * u).sum(), x, retain_graph=True)
        u = hu / hu.norm(dim=1, keepdim=True)
    (hu,) = torch.autograd.grad((grad * u).sum(), x)
    return (u * hu).sum(dim=1).abs().detach()


def test_lanczos_is_exact_where_20_power_iterations_fail_close_opposite_eigenvalues() -> None:
    # top two eigenvalues 1.0 and -0.98: power iteration's error shrinks like 0.98^(2t),
    # still ~0.45 after 20 steps; the other 198 fill [-0.5, 0.5]
    generator = torch.Generator().manual_seed(3)
    rest = torch.linspace(-0.5, 0.5, 198, dtype=torch.float64).tolist()
    matrix = rotated([1.0, -0.98, *rest], generator)
    loss = quadratic(matrix, torch.randn(200, generator=generator, dtype=torch.float64))
    x = torch.randn(8, 200, generator=generator, dtype=torch.float64)  # (B, D)
    exact = exact_spectral_norms(loss, x)
    torch.testing.assert_close(exact, torch.ones(8, dtype=torch.float64))  # the model's H
    result = lanczos_hessian_norm(loss, x, iterations=200, tolerance=1e-10, generator=generator)
    assert result.converged.all() and result.iterations < 200
    torch.testing.assert_close(result.hessian_norm, exact, rtol=1e-9, atol=0)
    old = power_iteration_20(loss, x, torch.Generator().manual_seed(3))
    assert ((old - exact).abs() / exact).max() > 0.2  # the failure the change fixes


def test_lanczos_matches_exact_per_sample_hessians_of_a_random_mlp() -> None:
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        torch.nn.Linear(30, 24), torch.nn.Tanh(), torch.nn.Linear(24, 5)
    ).double()
    x, y = torch.randn(6, 30, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])

    def loss(inputs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(inputs), y, reduction="none")  # (B,)

    hessians = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda v, b=b: torch.nn.functional.cross_entropy(model(v[None]), y[b : b + 1]),
                x[b],
            )
            for b in range(6)
        ]
    )  # (B, D, D)
    exact = torch.linalg.eigvalsh(hessians).abs().amax(dim=1)  # (B,)
    result = lanczos_hessian_norm(loss, x, iterations=30, tolerance=1e-10)
    assert result.converged.all()
    torch.testing.assert_close(result.hessian_norm, exact, rtol=1e-9, atol=0)


def test_lanczos_respects_the_iteration_cap_and_stops_at_the_tolerance() -> None:
    generator = torch.Generator().manual_seed(5)
    spectrum = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64).tolist()  # no gap at all
    matrix = rotated([2.0 * v for v in spectrum], generator)
    loss = quadratic(matrix, torch.zeros(200, dtype=torch.float64))
    x = torch.randn(4, 200, generator=generator, dtype=torch.float64)
    capped = lanczos_hessian_norm(loss, x, iterations=3, tolerance=1e-12, generator=generator)
    assert capped.iterations == 3 and not capped.converged.any()
    assert (capped.hessian_norm <= 2.0 + 1e-12).all()  # a Ritz value never exceeds ||H||_2
    loose = lanczos_hessian_norm(loss, x, iterations=200, tolerance=0.5, generator=generator)
    assert loose.converged.all() and loose.iterations == 2 * CHECK_EVERY  # second check stops


def test_geometry_analysis_reports_the_iteration_cap(tmp_path: Path) -> None:
    torch.manual_seed(6)
    info = DataInfo((40,), 3, (0.5,) * 40, (0.25,) * 40, ("a", "b", "c"))
    split = Split(torch.rand(20, 40, dtype=torch.float64), torch.randint(0, 3, (20,)))
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 3))
    ctx = AnalysisContext(
        model.double().eval(), DataSplits(split, None, split, info), torch.device("cpu"), tmp_path
    )
    params = GeometryParams(samples=20, batch_size=8, iterations=2, tolerance=1e-12)
    result = GeometryAnalysis(params).run(ctx)
    assert result.metrics["geometry/hessian_iterations_mean"] == 2
    assert result.metrics["geometry/hessian_converged_fraction"] == 0.0


def test_tolerance_counts_for_the_spec_hash_only_when_set_off_its_default() -> None:
    from regcore.spec import ExperimentSpec

    def spec(**geometry: float) -> ExperimentSpec:
        return ExperimentSpec.model_validate(
            {
                "dataset": {"name": "digits"},
                "model": {"name": "mlp"},
                "analyses": [{"kind": "geometry", "iterations": 20, **geometry}],
            }
        )

    (identity,) = spec().identity()["analyses"]
    assert "tolerance" not in identity  # specs written before the field keep their hash
    assert spec(tolerance=1e-3).spec_hash() == spec().spec_hash()
    assert spec(tolerance=1e-5).spec_hash() != spec().spec_hash()


def test_lanczos_stops_when_a_relu_networks_low_rank_hessian_is_exhausted() -> None:
    # for a ReLU MLP H = J^T (diag(p) - p p^T) J has rank < C = 4: the Krylov space is
    # invariant within 4 steps, beta ~ 0 there, and the estimate is exact (float32 here)
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(50, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x, y = torch.randn(5, 50), torch.tensor([0, 1, 2, 3, 0])

    def loss(inputs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(inputs), y, reduction="none")  # (B,)

    result = lanczos_hessian_norm(loss, x, iterations=50, tolerance=1e-12)
    assert result.converged.all() and result.iterations <= 2 * CHECK_EVERY
    double = model.double()
    hessians = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda v, b=b: torch.nn.functional.cross_entropy(double(v[None]), y[b : b + 1]),
                x[b].double(),
            )
            for b in range(5)
        ]
    )  # (B, D, D)
    exact = torch.linalg.eigvalsh(hessians).abs().amax(dim=1)
    torch.testing.assert_close(result.hessian_norm.double(), exact, rtol=1e-4, atol=0)
