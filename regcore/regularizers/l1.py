"""L1 regularization: lambda * sum |w| (sparsity-inducing; subgradient 0 at w = 0)."""

from __future__ import annotations

import torch
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext, l1_norm, weight_parameters


class L1Params(ComponentParams):
    weight: float = Field(1e-5, ge=0, le=MAX_WEIGHT, description="lambda")
    exclude_bias_and_norm: bool = False


@REGULARIZERS.register("l1")
class L1(Regularizer):
    Params = L1Params
    params: L1Params

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        weights = weight_parameters(ctx.model, self.params.exclude_bias_and_norm)
        return self.params.weight * l1_norm(weights)
