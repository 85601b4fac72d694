"""Gaussian noise on the weights (An 1996; Graves 2011): a fresh w + N(0, sigma^2) on the
chosen layers for every training forward pass. The gradient is taken at the noisy point
and applied to the clean weights, which are restored before the optimizer step.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from pydantic import Field
from torch import nn

from regcore.registries import REGULARIZERS
from regcore.registry import ComponentParams
from regcore.regularizers.base import Regularizer


class WeightNoiseParams(ComponentParams):
    sigma: float = Field(0.01, gt=0)
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
        self._clean: list[tuple[nn.Parameter, torch.Tensor]] = []

    def selected(self, model: nn.Module) -> list[nn.Parameter]:
        chosen: list[nn.Parameter] = []
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                continue
            if not any(fnmatchcase(name, pattern) for pattern in self.params.layers):
                continue
            chosen.append(module.weight)
            if self.params.include_bias and module.bias is not None:
                chosen.append(module.bias)
        if not chosen:
            raise ValueError(f"weight_noise: no conv/linear layer matches {self.params.layers}")
        return chosen

    @torch.no_grad()
    def before_forward(self, model: nn.Module) -> None:
        self._clean = []
        for parameter in self.selected(model):
            self._clean.append((parameter, parameter.detach().clone()))
            parameter.add_(self.params.sigma * torch.randn_like(parameter))

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for parameter, clean in self._clean:
            parameter.copy_(clean)
        self._clean = []
