"""Gaussian noise on the weights (An 1996; Graves 2011): a fresh w + N(0, sigma^2) on the
chosen layers for every training forward pass. The gradient is taken at the noisy point
and applied to the clean weights, which are restored before the optimizer step.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer, select_layers, stored_weight


class WeightNoiseParams(ComponentParams):
    sigma: float = Field(0.01, gt=0, le=MAX_FLOAT)
    layers: list[str] = Field(
        ["*"], description="glob patterns over module names (e.g. 'fc*'); conv and linear only"
    )
    include_bias: bool = False


@REGULARIZERS.register("weight_noise")
class WeightNoise(Regularizer):
    Params = WeightNoiseParams
    params: WeightNoiseParams

    def __init__(self, params: WeightNoiseParams) -> None:
        super().__init__(params)
        self._clean: list[tuple[torch.Tensor, torch.Tensor]] = []

    def selected(self, model: nn.Module) -> list[torch.Tensor]:
        """The stored weights (and biases) of the matching layers: under a parametrization
        (spectral_norm, lcnn) noise goes into the original weight, not the computed one."""
        chosen: list[torch.Tensor] = []
        for module in select_layers(model, self.params.layers, "weight_noise").values():
            chosen.append(stored_weight(module))
            if self.params.include_bias and module.bias is not None:
                chosen.append(module.bias)
        return chosen

    @torch.no_grad()
    def before_forward(self, model: nn.Module) -> None:
        self._clean = []
        for parameter in self.selected(model):
            self._clean.append((parameter, parameter.detach().clone()))
            # logical order: a channels-last weight gets the same draw as a contiguous one
            noise = torch.randn_like(parameter, memory_format=torch.contiguous_format)
            parameter.add_(self.params.sigma * noise)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for parameter, clean in self._clean:
            parameter.copy_(clean)
        self._clean = []
