"""The beta penalty of low-curvature networks (Srinivas et al. NeurIPS 2022, "Efficient
training of low-curvature neural networks", https://openreview.net/forum?id=2B2xIJ299rx).

A centered softplus s(x) = (softplus(beta x) - log 2) / beta has curvature at most
beta / 4, so the network's curvature bound grows with the betas of its activations;
with learnable betas the penalty ``lambda_beta * sum_l beta_l`` (over every learnable
``CenteredSoftplus``, one beta per layer) trades curvature against the data loss.

The sum is over the betas the forward pass uses, ``max(beta, CenteredSoftplus.MIN_BETA)``:
the value is exactly the curvature proxy, and a beta already at the floor is not pushed
further below it (where it would no longer change the network). The default weight 1e-2
is the reference implementation's (kylematoba/lcnn, ``--reg-beta``). A model without a
learnable centered softplus (activation tanh or relu, or learn_beta off) gets no term;
``setup`` warns, since the penalty then does nothing.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import CenteredSoftplus
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class BetaPenaltyParams(ComponentParams):
    weight: float = Field(1e-2, ge=0, le=MAX_WEIGHT, description="lambda_beta")


def learnable_betas(model: nn.Module) -> list[nn.Parameter]:
    """The learnable beta of every ``CenteredSoftplus`` in the model, each once."""
    betas: dict[int, nn.Parameter] = {}
    for module in model.modules():
        beta = module.beta if isinstance(module, CenteredSoftplus) else None
        if isinstance(beta, nn.Parameter) and beta.requires_grad:
            betas.setdefault(id(beta), beta)
    return list(betas.values())


def beta_sum(model: nn.Module) -> torch.Tensor | None:
    """sum_l max(beta_l, MIN_BETA) over the learnable betas; None if there are none."""
    betas = learnable_betas(model)
    if not betas:
        return None
    return torch.stack([beta.clamp_min(CenteredSoftplus.MIN_BETA) for beta in betas]).sum()


@REGULARIZERS.register("beta_penalty")
class BetaPenalty(Regularizer):
    """lambda_beta * sum of the learnable centered-softplus betas (Srinivas et al. 2022)."""

    Params = BetaPenaltyParams
    params: BetaPenaltyParams

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        if not learnable_betas(model):
            warnings.warn(
                "beta_penalty: the model has no learnable centered softplus, so the penalty "
                "is empty; use activation centered_softplus with learn_beta on, or lcnn",
                stacklevel=2,
            )
        return model

    def penalty(self, ctx: StepContext) -> torch.Tensor | None:
        total = beta_sum(ctx.model)
        return None if total is None else self.params.weight * total
