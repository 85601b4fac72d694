"""Low-curvature neural networks, the preset (Srinivas et al. NeurIPS 2022, "Efficient
training of low-curvature neural networks", https://openreview.net/forum?id=2B2xIJ299rx).

The paper bounds a network's curvature by its activations' curvatures (beta / 4 for a
centered softplus) times its layers' Lipschitz constants, and keeps both small. ``setup``
turns a model into an LCNN, in place:

1. every activation module (ReLU, Tanh, Softplus, CenteredSoftplus) becomes a fresh
   ``CenteredSoftplus(beta_init)`` with its own learnable beta;
2. every ``BatchNorm2d`` becomes a ``LipschitzBatchNorm2d`` (affine scale off, each
   channel's gain <= a learnable gamma initialized to ``bn_gamma``; the reference code
   starts it at 10);
3. every conv and linear layer gets the spectral bound of ``spectral_norm``: operator
   norm <= ``gamma`` (convs by their true operator norm on the layer's input size).

The penalty is ``beta_weight * sum_l beta_l`` (``beta_penalty``); ``gamma_weight`` adds
the reference implementation's ``sum_l |log gamma_l|`` over the Lipschitz batch norms
(kylematoba/lcnn uses 1e-2 for both; off by default, as the paper's objective names
only the beta term). Unlike the reference, whose convs are always scaled to norm exactly
1, layers already within ``gamma`` are left as they are (a bound, not an equality).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import CenteredSoftplus
from regcore.models.lipschitz_bn import LipschitzBatchNorm2d
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_FLOAT, MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext
from regcore.regularizers.beta_penalty import beta_sum
from regcore.regularizers.spectral_norm import (
    SpectralBound,
    apply_spectral_bound,
    is_last_step_of_epoch,
    refresh_spectral_bounds,
)

SMOOTHED_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Softplus, CenteredSoftplus)


class LCNNParams(ComponentParams):
    beta_init: float = Field(
        5.0, gt=0, le=MAX_FLOAT, description="initial beta of every centered softplus"
    )
    beta_weight: float = Field(
        1e-2, ge=0, le=MAX_WEIGHT, description="lambda_beta: weight of sum beta"
    )
    gamma: float = Field(
        1.0, gt=0, le=MAX_FLOAT, description="bound on each conv/linear operator norm"
    )
    bn_gamma: float = Field(
        10.0, gt=0, le=MAX_FLOAT, description="initial gamma of the Lipschitz batch norms"
    )
    gamma_weight: float = Field(
        0.0,
        ge=0,
        le=MAX_WEIGHT,
        description="weight of sum |log gamma| over the Lipschitz batch norms",
    )
    power_iterations: int = Field(
        1, ge=1, le=MAX_COUNT, description="power iterations per training forward"
    )
    eval_iterations: int = Field(
        50,
        ge=0,
        le=MAX_COUNT,
        description="Lanczos steps at setup and after each epoch's last step",
    )


def replace_children(
    model: nn.Module,
    kind: type[nn.Module] | tuple[type[nn.Module], ...],
    make: Callable[[nn.Module], nn.Module],
) -> int:
    """Replace every submodule of type ``kind`` by ``make(old)``, in place; returns how many.
    A module held twice is replaced at each place by its own new module."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced


def smooth_activations(model: nn.Module, beta_init: float) -> int:
    """Every activation module becomes a fresh learnable ``CenteredSoftplus(beta_init)``."""
    reference = next(model.parameters())

    def centered_softplus(_: nn.Module) -> nn.Module:
        fresh = CenteredSoftplus(beta_init, learnable=True)
        return fresh.to(device=reference.device, dtype=reference.dtype)

    return replace_children(model, SMOOTHED_ACTIVATIONS, centered_softplus)


def lipschitz_batch_norms(model: nn.Module, gamma: float) -> int:
    """Every ``BatchNorm2d`` becomes its ``LipschitzBatchNorm2d`` twin (statistics kept)."""
    return replace_children(
        model, nn.BatchNorm2d, lambda bn: LipschitzBatchNorm2d.from_batch_norm(bn, gamma)
    )


@REGULARIZERS.register("lcnn")
class LCNN(Regularizer):
    """Low-curvature network: centered softplus, Lipschitz layers, penalty on sum beta."""

    Params = LCNNParams
    params: LCNNParams

    def __init__(self, params: LCNNParams) -> None:
        super().__init__(params)
        self.bounds: list[tuple[nn.Module, SpectralBound]] = []

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        p = self.params
        smooth_activations(model, p.beta_init)
        lipschitz_batch_norms(model, p.bn_gamma)
        self.bounds = apply_spectral_bound(
            model, info.input_shape, p.gamma, ["*"], p.power_iterations
        )
        refresh_spectral_bounds(self.bounds, p.eval_iterations)
        return model

    def penalty(self, ctx: StepContext) -> torch.Tensor | None:
        total = beta_sum(ctx.model)
        terms = [] if total is None else [self.params.beta_weight * total]
        if self.params.gamma_weight:
            log_gammas = [
                m.log_gamma.abs()
                for m in ctx.model.modules()
                if isinstance(m, LipschitzBatchNorm2d)
            ]
            if log_gammas:
                terms.append(self.params.gamma_weight * torch.stack(log_gammas).sum())
        return torch.stack(terms).sum() if terms else None

    def after_step(self, ctx: StepContext) -> None:
        if is_last_step_of_epoch(ctx):  # before validation, checkpoint and on_epoch_end
            refresh_spectral_bounds(self.bounds, self.params.eval_iterations)
