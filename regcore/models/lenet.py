"""LeNet-5 (LeCun et al. 1998) as the study used it on MNIST: 61,706 parameters.

conv 5x5 C->6 (padding 2), act, maxpool 2; conv 5x5 6->16, act, maxpool 2;
fc 400->120, act, dropout; fc 120->84, act, dropout; fc 84->classes.
Tanh and Xavier-uniform weights (zero biases) by default, as in the study. The first fc
layer's width follows the input size (400 for 28x28, 576 for 32x32); inputs need at
least 12x12 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import ActivationName, ModelParams, input_normalization, xavier_init
from regcore.registries import MODELS

MIN_SIDE = 12  # conv2 (5x5, no padding) needs 5 pixels after the first pool, pool2 needs 2


class LeNetParams(ModelParams):
    activation: ActivationName = "tanh"


class LeNet(nn.Module):
    """Shapes in the comments are for 1x28x28 inputs."""

    def __init__(self, params: LeNetParams, info: DataInfo) -> None:
        super().__init__()
        if len(info.input_shape) != 3:
            raise ValueError(
                f"lenet needs image inputs (C, H, W), got shape {info.input_shape}; use model mlp"
            )
        channels, height, width = info.input_shape
        if min(height, width) < MIN_SIDE:
            raise ValueError(
                f"lenet needs inputs of at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
                f"{height}x{width}; use model mlp or dataset size 28"
            )
        # each side: conv1 keeps it (padding 2), pool halves, conv2 takes 4, pool halves
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.normalize = input_normalization(info, params.normalize)
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.act1 = params.new_activation()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act2 = params.new_activation()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(flat, 120)
        self.act3 = params.new_activation()
        self.drop1 = nn.Dropout(params.dropout)
        self.fc2 = nn.Linear(120, 84)
        self.act4 = params.new_activation()
        self.drop2 = nn.Dropout(params.dropout)
        self.fc3 = nn.Linear(84, info.num_classes)
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, 1, 28, 28)
        x = self.pool1(self.act1(self.conv1(x)))  # (B, 6, 14, 14)
        x = self.pool2(self.act2(self.conv2(x)))  # (B, 16, 5, 5)
        x = x.flatten(1)  # (B, 400)
        x = self.drop1(self.act3(self.fc1(x)))  # (B, 120)
        x = self.drop2(self.act4(self.fc2(x)))  # (B, 84)
        return self.fc3(x)  # (B, classes)


@MODELS.register("lenet", params=LeNetParams)
def build(params: LeNetParams, info: DataInfo) -> nn.Module:
    """LeNet-5, the study's MNIST net: two 5x5 convs and three fc layers; 61,706 params."""
    return LeNet(params, info)
