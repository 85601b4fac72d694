from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from regcore.analysis.base import AnalysisContext
from regcore.analysis.geometry import GeometryAnalysis, GeometryParams, hessian_spectral_norm
from regcore.data.base import DataInfo, DataSplits, Split


def quadratic(matrix: torch.Tensor, shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """l_b(x) = 1/2 x_b^T A x_b + c . x_b: Hessian A for every sample, gradient A x + c."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)  # (B, D)
        return 0.5 * ((flat @ matrix) * flat).sum(dim=1) + flat @ shift

    return loss


@pytest.mark.parametrize("eigenvalues", [[5.0, -3.0, 1.0, 0.5], [-6.0, 2.0, 1.0, 0.1]])
def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian(
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
    params = GeometryParams(samples=50, batch_size=7, iterations=30)
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
    assert (tmp_path / "geometry" / "samples.csv").read_text().count("\n") == 51
