"""Geometry of the loss in input space: gradient norm, Hessian spectral norm, curvature.

Per test sample, model in eval mode, l = CE(f(x), y): g = grad_x l; the Hessian's
spectral norm ||H||_2 by power iteration on Hessian-vector products Hu = grad_x(g . u)
(u normalized each step; ||H||_2 = |u^T H u| at the end); the normalized curvature
C = ||H||_2 / (||g||_2 + 1e-6) (Srinivas et al. 2022); and the exact Jacobian norm
||J||_F of the logits. Reported as mean and std over N samples, batched: in eval mode
samples are independent, so one backward pass serves a whole batch.

``input_space``: pixel (default) differentiates with respect to x in [0, 1]; normalized
with respect to the model's normalized input z = (x - mean) / std, by differentiating the
composed function z -> model(mean + std * z) (``regcore.jacobian.in_input_space``): for
one channel ||g|| and ||J||_F are std times the pixel ones, ||H||_2 std^2 times, C std
times. Hoffman et al.'s ||J||_F (MNIST LeNet 32.9 unregularized) is in normalized units.
The metric names do not change; the space is the analysis param ``input_space``, in
the spec and in the tracker's params (``analyses.N.input_space``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.analysis.base import Aggregate, Analysis, AnalysisContext, AnalysisResult, batched
from regcore.jacobian import InputSpace, in_input_space, input_space_field
from regcore.registries import ANALYSES
from regcore.registry import MAX_BATCH, MAX_COUNT, MAX_SAMPLES, MAX_SEED, ComponentParams

CURVATURE_EPS = 1e-6

PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]  # (B, ...) inputs -> (B,) losses


class GeometryParams(ComponentParams):
    samples: int = Field(1000, ge=1, le=MAX_SAMPLES, description="N test samples")
    iterations: int = Field(20, ge=1, le=MAX_COUNT, description="power iterations for ||H||_2")
    batch_size: int = Field(100, ge=1, le=MAX_BATCH)
    split: Literal["test", "val", "train"] = "test"
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="picks the samples and power-iteration starts"
    )
    input_space: InputSpace = input_space_field()


def hessian_spectral_norm(
    loss: PerSampleLoss,
    x: torch.Tensor,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(||g_b||_2, ||H_b||_2) per sample, by power iteration on Hessian-vector products."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x).sum(), x, create_graph=True)  # (B, ...)
    flat_shape = (x.shape[0], -1)
    u = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    u = u / u.reshape(flat_shape).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    rayleigh = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        (hu,) = torch.autograd.grad((grad * u).sum(), x, retain_graph=True)  # (B, ...) H_b u_b
        rayleigh = (u * hu).reshape(flat_shape).sum(dim=1)  # u^T H u, u unit
        norms = hu.reshape(flat_shape).norm(dim=1).clamp_min(1e-30)
        u = hu / norms.view(-1, *[1] * (x.ndim - 1))
    (hu,) = torch.autograd.grad((grad * u).sum(), x)
    rayleigh = (u * hu).reshape(flat_shape).sum(dim=1)
    return grad.detach().reshape(flat_shape).norm(dim=1), rayleigh.abs().detach()


@ANALYSES.register("geometry")
class GeometryAnalysis(Analysis):
    """Input-gradient norm, Hessian spectral norm, curvature, ||J||_F; pixel or normalized units."""

    Params = GeometryParams
    params: GeometryParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from regcore.jacobian import frobenius_norm_sq

        params = self.params
        split = getattr(ctx.data, params.split)
        if split is None:
            raise ValueError(f"geometry: the dataset has no {params.split} split")
        generator = torch.Generator().manual_seed(params.seed)
        order = torch.randperm(len(split), generator=generator)[: params.samples]
        x_all, y_all = split.x[order.to(split.x.device)], split.y[order.to(split.x.device)]
        # The model as a function of inputs in params.input_space (pixel: itself), x_all in it
        model, to_input = in_input_space(ctx.model, params.input_space, "geometry")
        x_all = to_input(x_all)

        columns: dict[str, list[torch.Tensor]] = {
            "grad_norm": [], "hessian_norm": [], "jacobian_frobenius": [],
        }  # fmt: skip
        for start, stop in batched(len(x_all), params.batch_size):
            x, y = x_all[start:stop], y_all[start:stop]

            def loss(inputs: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
                return F.cross_entropy(model(inputs), y, reduction="none")  # (B,)

            grad_norm, hessian_norm = hessian_spectral_norm(loss, x, params.iterations, generator)
            columns["grad_norm"].append(grad_norm)  # kept on the device: one copy at the end
            columns["hessian_norm"].append(hessian_norm)
            columns["jacobian_frobenius"].append(frobenius_norm_sq(model, x).sqrt())
        values = {name: torch.cat(parts).double().cpu() for name, parts in columns.items()}
        values["curvature"] = values["hessian_norm"] / (values["grad_norm"] + CURVATURE_EPS)

        metrics: dict[str, float] = {}
        for name, column in values.items():
            summary = Aggregate.of(column)
            metrics[f"geometry/{name}_mean"] = summary.mean
            metrics[f"geometry/{name}_std"] = summary.std

        outdir = ctx.outdir / "geometry"
        outdir.mkdir(parents=True, exist_ok=True)
        table = outdir / "samples.csv"
        with table.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "label", *values])
            for row in range(len(order)):
                cells = [float(column[row]) for column in values.values()]
                writer.writerow([int(order[row]), int(y_all[row]), *cells])
        return AnalysisResult(metrics, [table])
