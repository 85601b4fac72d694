"""L2 regularization: an explicit penalty lambda * sum ||w||^2, or decoupled weight decay.

``mode: penalty`` adds ``weight * sum_i ||w_i||^2`` to the loss (logged as reg/l2).
``mode: decoupled`` (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101)
shrinks the weights at each optimizer step, ``w <- w - lr * 2 * weight * w`` (applied
just before the optimizer's own update, as AdamW does): under plain SGD this is exactly
the penalty's step, but it bypasses momentum and Adam's scaling. Note PyTorch's
``weight_decay=wd`` equals ``weight = wd / 2`` here.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext, squared_l2_norm, weight_parameters


class L2Params(ComponentParams):
    weight: float = Field(1e-4, ge=0, le=MAX_WEIGHT, description="lambda")
    mode: Literal["penalty", "decoupled"] = "penalty"
    exclude_bias_and_norm: bool = Field(
        False, description="leave biases, norm-layer parameters and activation betas alone"
    )


@REGULARIZERS.register("l2")
class L2(Regularizer):
    Params = L2Params
    params: L2Params

    def penalty(self, ctx: StepContext) -> torch.Tensor | None:
        if self.params.mode != "penalty":
            return None
        weights = weight_parameters(ctx.model, self.params.exclude_bias_and_norm)
        return self.params.weight * squared_l2_norm(weights)

    @torch.no_grad()
    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.params.mode != "decoupled":
            return
        shrink = 1.0 - optimizer.param_groups[0]["lr"] * 2.0 * self.params.weight
        for weight in weight_parameters(model, self.params.exclude_bias_and_norm):
            weight.mul_(shrink)
