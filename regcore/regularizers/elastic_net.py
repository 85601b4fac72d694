"""Elastic net (Zou & Hastie 2005): l1_weight * sum |w| + l2_weight * sum ||w||^2."""

from __future__ import annotations

import torch
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import (
    Regularizer,
    StepContext,
    l1_norm,
    squared_l2_norm,
    weight_parameters,
)


class ElasticNetParams(ComponentParams):
    l1_weight: float = Field(1e-5, ge=0, le=MAX_WEIGHT)
    l2_weight: float = Field(1e-4, ge=0, le=MAX_WEIGHT)
    exclude_bias_and_norm: bool = False


@REGULARIZERS.register("elastic_net")
class ElasticNet(Regularizer):
    Params = ElasticNetParams
    params: ElasticNetParams

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        weights = list(weight_parameters(ctx.model, self.params.exclude_bias_and_norm))
        return self.params.l1_weight * l1_norm(weights) + self.params.l2_weight * squared_l2_norm(
            weights
        )
