"""A multilayer perceptron: flatten, then (linear, act, dropout) per hidden layer, then linear.

For vector data (blobs, input shape (2,)) and quick image runs (flattened, e.g. digits
at 8x8). ``hidden: []`` is multinomial logistic regression. Weights keep PyTorch's
default initialization.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import ActivationName, ModelParams, input_normalization
from regcore.registries import MODELS
from regcore.registry import MAX_LAYERS, MAX_WIDTH


class MLPParams(ModelParams):
    activation: ActivationName = "relu"
    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        [256, 256],
        max_length=MAX_LAYERS,
        description="width of each hidden layer, input side first",
    )


class MLP(nn.Module):
    def __init__(self, params: MLPParams, info: DataInfo) -> None:
        super().__init__()
        self.normalize = input_normalization(info, params.normalize)
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = math.prod(info.input_shape)
        for hidden in params.hidden:
            layers += [
                nn.Linear(width, hidden),
                params.new_activation(),
                nn.Dropout(params.dropout),
            ]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, *input_shape)
        x = self.flatten(x)  # (B, D)
        x = self.hidden(x)  # (B, hidden[-1])
        return self.out(x)  # (B, classes)


@MODELS.register("mlp", params=MLPParams)
def build(params: MLPParams, info: DataInfo) -> nn.Module:
    """Multilayer perceptron on vectors or flattened images; hidden widths configurable."""
    return MLP(params, info)
