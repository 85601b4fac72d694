"""Geometry of the loss in input space: gradient norm, Hessian spectral norm, curvature.

Per test sample, model in eval mode, l = CE(f(x), y): g = grad_x l; the Hessian's
spectral norm ||H||_2 = max_i |lambda_i(H)| by Lanczos on Hessian-vector products
Hu = grad_x(g . u); the normalized curvature C = ||H||_2 / (||g||_2 + 1e-6) (Srinivas
et al. 2022); and the exact Jacobian norm ||J||_F of the logits. Reported as mean and
std over N samples, batched: in eval mode samples are independent, so one backward
pass serves a whole batch.

Why Lanczos: H is symmetric but indefinite, and power iteration converges at the rate
|lambda_2 / lambda_1| per step, which is close to 1 when the two largest eigenvalues are
close in size and opposite in sign: with eigenvalues 1 and -0.98, after 20 steps the
second eigenvector still carries 0.98^20 = 0.67 of its starting weight, its term of
u^T H u has the opposite sign, and |u^T H u| is 61% short for equal starting components
(anything up to 100% for other starts, where the two terms cancel). Lanczos with full
reorthogonalization builds an orthonormal basis Q_k of the Krylov space
span{u, Hu, ..., H^(k-1) u} and the tridiagonal T_k = Q_k^T H Q_k; both ends of the
spectrum converge from the first steps, and ||H||_2 is estimated by the largest |Ritz
value| max|eig(T_k)|: never above ||H||_2, non-decreasing in k, and exact once the
Krylov space is invariant (for a ReLU network H = J^T (diag(p) - p p^T) J has rank
below the number of classes C, so within C steps).
A batch stops when every sample's estimate changed by at most ``tolerance`` (relative)
since the check CHECK_EVERY steps before, or at ``iterations`` steps (Hessian-vector
products); ``geometry/hessian_iterations_mean`` (steps taken, per sample) and
``geometry/hessian_converged_fraction`` (samples that met the tolerance or exhausted
their Krylov space) say how it went.

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
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.analysis.base import Aggregate, Analysis, AnalysisContext, AnalysisResult, batched
from regcore.jacobian import InputSpace, in_input_space, input_space_field
from regcore.registries import ANALYSES
from regcore.registry import MAX_BATCH, MAX_COUNT, MAX_SAMPLES, MAX_SEED, ComponentParams
from regcore.spec import IDENTITY_UNLESS_DEFAULT

CURVATURE_EPS = 1e-6
CHECK_EVERY = 4  # Lanczos steps between convergence checks (each one syncs with the host)
BREAKDOWN = 100  # beta below BREAKDOWN * machine eps * |T| ends a sample's Krylov space

PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]  # (B, ...) inputs -> (B,) losses


class GeometryParams(ComponentParams):
    samples: int = Field(1000, ge=1, le=MAX_SAMPLES, description="N test samples")
    iterations: int = Field(
        50, ge=1, le=MAX_COUNT, description="cap on Lanczos steps (Hessian-vector products)"
    )
    tolerance: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="stop Lanczos when every sample's ||H||_2 estimate changed by at most "
        "this (relative) over the last check interval",
        json_schema_extra=IDENTITY_UNLESS_DEFAULT,  # added later: earlier specs keep their hash
    )
    batch_size: int = Field(100, ge=1, le=MAX_BATCH)
    split: Literal["test", "val", "train"] = "test"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="picks the samples and Lanczos starts")
    input_space: InputSpace = input_space_field()


@dataclass(frozen=True)
class HessianNorm:
    grad_norm: torch.Tensor  # (B,) ||g_b||_2
    hessian_norm: torch.Tensor  # (B,) ||H_b||_2 estimate, max |Ritz value|
    iterations: int  # Lanczos steps (Hessian-vector products) the batch took
    converged: torch.Tensor  # (B,) bool: tolerance met, or the Krylov space was exhausted


def _ritz_norm(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """max |eig(T)| per sample of the tridiagonal T with diagonal alpha (B, k) and
    off-diagonal beta (B, k - 1), in float64 on the host: T is tiny, and linalg on CUDA
    syncs anyway."""
    alpha, beta = alpha.double().cpu(), beta.double().cpu()
    tridiagonal = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    return torch.linalg.eigvalsh(tridiagonal).abs().amax(dim=1)  # (B,)


def lanczos_hessian_norm(
    loss: PerSampleLoss,
    x: torch.Tensor,
    iterations: int = 50,
    tolerance: float = 1e-3,
    generator: torch.Generator | None = None,
) -> HessianNorm:
    """||g_b||_2 and ||H_b||_2 per sample by batched Lanczos on Hessian-vector products.

    One Lanczos recurrence per sample, run side by side (the HVP of the summed loss is
    the per-sample HVP since samples are independent), with full reorthogonalization
    against all earlier basis vectors (twice, for float32). The estimate is the largest
    |Ritz value|; the batch stops when every sample's estimate moved by at most
    ``tolerance`` relative since the previous check (every CHECK_EVERY steps), or after
    ``iterations`` steps, or when every sample's Krylov space is exhausted (beta ~ 0:
    its estimate is then exact).
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x).sum(), x, create_graph=True)  # (B, ...)
    batch, dim = x.shape[0], x[0].numel()
    steps_cap = min(iterations, dim)  # D steps span the whole space
    q = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device).reshape(batch, dim)
    q = q / q.norm(dim=1, keepdim=True)  # (B, D)
    basis = torch.zeros(batch, steps_cap, dim, dtype=x.dtype, device=x.device)  # (B, k, D) Q
    alpha = torch.zeros(batch, steps_cap, dtype=x.dtype, device=x.device)  # (B, k) diag T
    beta = torch.zeros(batch, steps_cap, dtype=x.dtype, device=x.device)  # (B, k) off-diag T
    scale = torch.zeros(batch, dtype=x.dtype, device=x.device)  # (B,) running max |T entry|
    floor = BREAKDOWN * torch.finfo(x.dtype).eps
    previous: torch.Tensor | None = None  # (B,) estimate at the last check, on the host
    estimate = torch.zeros(batch, dtype=torch.float64)
    converged = torch.zeros(batch, dtype=torch.bool)
    steps = 0
    for j in range(steps_cap):
        basis[:, j] = q
        (hq,) = torch.autograd.grad((grad * q.view_as(x)).sum(), x, retain_graph=True)
        w = hq.reshape(batch, dim)  # (B, D) H_b q_b
        alpha[:, j] = (q * w).sum(dim=1)
        w = w - alpha[:, j, None] * q
        if j > 0:
            w = w - beta[:, j - 1, None] * basis[:, j - 1]
        for _ in range(2):  # full reorthogonalization against Q_{j+1}
            known = basis[:, : j + 1]  # (B, j + 1, D)
            w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", known, w), known)
        norm = w.norm(dim=1)  # (B,)
        scale = torch.maximum(scale, torch.maximum(alpha[:, j].abs(), norm))
        alive = norm > floor * scale  # False: the Krylov space is invariant, T is exact
        beta[:, j] = torch.where(alive, norm, torch.zeros_like(norm))
        # a dead sample keeps q = 0 from here on: its later alpha and beta are 0, which adds
        # only zero eigenvalues to T, so max |Ritz value| stays exact
        q = torch.where(alive[:, None], w / norm.clamp_min(torch.finfo(x.dtype).tiny)[:, None], 0)
        steps = j + 1
        if steps % CHECK_EVERY and steps < steps_cap:
            continue
        estimate = _ritz_norm(alpha[:, :steps], beta[:, : steps - 1])
        # one host sync per check; after D steps Q spans R^D and T's eigenvalues are H's
        exhausted = ~alive.cpu() | (steps == dim)
        converged = exhausted.clone()
        if previous is not None:
            converged |= (estimate - previous).abs() <= tolerance * estimate
        if bool(converged.all()):
            break
        previous = estimate
    return HessianNorm(
        grad_norm=grad.detach().reshape(batch, dim).norm(dim=1),
        hessian_norm=estimate.to(device=x.device, dtype=x.dtype),
        iterations=steps,
        converged=converged,
    )


def hessian_spectral_norm(
    loss: PerSampleLoss,
    x: torch.Tensor,
    iterations: int = 50,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(||g_b||_2, ||H_b||_2) per sample, by Lanczos (``lanczos_hessian_norm``)."""
    result = lanczos_hessian_norm(loss, x, iterations, tolerance, generator)
    return result.grad_norm, result.hessian_norm


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
        hessian_steps: list[torch.Tensor] = []  # (B,) per batch: Lanczos steps it took
        hessian_converged: list[torch.Tensor] = []  # (B,) per batch: tolerance met
        for start, stop in batched(len(x_all), params.batch_size):
            x, y = x_all[start:stop], y_all[start:stop]

            def loss(inputs: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
                return F.cross_entropy(model(inputs), y, reduction="none")  # (B,)

            hessian = lanczos_hessian_norm(loss, x, params.iterations, params.tolerance, generator)
            columns["grad_norm"].append(hessian.grad_norm)  # on the device: one copy at the end
            columns["hessian_norm"].append(hessian.hessian_norm)
            hessian_steps.append(torch.full((len(x),), float(hessian.iterations)))
            hessian_converged.append(hessian.converged)
            columns["jacobian_frobenius"].append(frobenius_norm_sq(model, x).sqrt())
            ctx.report(stop / len(x_all), f"{stop}/{len(x_all)} samples")
        values = {name: torch.cat(parts).double().cpu() for name, parts in columns.items()}
        values["curvature"] = values["hessian_norm"] / (values["grad_norm"] + CURVATURE_EPS)

        metrics: dict[str, float] = {}
        for name, column in values.items():
            summary = Aggregate.of(column)
            metrics[f"geometry/{name}_mean"] = summary.mean
            metrics[f"geometry/{name}_std"] = summary.std
        # per sample, so batches of different sizes weigh as their samples do
        metrics["geometry/hessian_iterations_mean"] = float(torch.cat(hessian_steps).mean())
        metrics["geometry/hessian_converged_fraction"] = float(
            torch.cat(hessian_converged).double().mean()
        )

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
