"""DDNet, the study's CIFAR-10 network: 1,147,978 parameters on 3x32x32 with 10 classes.

conv 3x3 C->64, act; conv 64->64, act, maxpool 2; conv 64->128, act; conv 128->128, act,
maxpool 2; fc 3200->256, act, dropout; fc 256->256, act, dropout; fc 256->classes.
No padding and no batch norm; Xavier-uniform weights (zero biases), ReLU by default. The
first fc layer's width follows the input size; inputs need at least 16x16 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import ActivationName, ModelParams, input_normalization, xavier_init
from regcore.registries import MODELS

MIN_SIDE = 16  # two unpadded convs, pool, two more, pool: ((16 - 4) // 2 - 4) // 2 = 1


class DDNetParams(ModelParams):
    activation: ActivationName = "relu"


class DDNet(nn.Module):
    """Shapes in the comments are for 3x32x32 inputs."""

    def __init__(self, params: DDNetParams, info: DataInfo) -> None:
        super().__init__()
        if len(info.input_shape) != 3:
            raise ValueError(
                f"ddnet needs image inputs (C, H, W), got shape {info.input_shape}; use model mlp"
            )
        channels, height, width = info.input_shape
        if min(height, width) < MIN_SIDE:
            raise ValueError(
                f"ddnet needs inputs of at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
                f"{height}x{width}; use model mlp"
            )
        # each side: two unpadded 3x3 convs take 4, pool halves, twice
        flat = 128 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
        self.normalize = input_normalization(info, params.normalize)
        self.conv1 = nn.Conv2d(channels, 64, 3)
        self.act1 = params.new_activation()
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.act2 = params.new_activation()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.act3 = params.new_activation()
        self.conv4 = nn.Conv2d(128, 128, 3)
        self.act4 = params.new_activation()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(flat, 256)
        self.act5 = params.new_activation()
        self.drop1 = nn.Dropout(params.dropout)
        self.fc2 = nn.Linear(256, 256)
        self.act6 = params.new_activation()
        self.drop2 = nn.Dropout(params.dropout)
        self.fc3 = nn.Linear(256, info.num_classes)
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, 3, 32, 32)
        x = self.act1(self.conv1(x))  # (B, 64, 30, 30)
        x = self.pool1(self.act2(self.conv2(x)))  # (B, 64, 14, 14)
        x = self.act3(self.conv3(x))  # (B, 128, 12, 12)
        x = self.pool2(self.act4(self.conv4(x)))  # (B, 128, 5, 5)
        x = x.flatten(1)  # (B, 3200)
        x = self.drop1(self.act5(self.fc1(x)))  # (B, 256)
        x = self.drop2(self.act6(self.fc2(x)))  # (B, 256)
        return self.fc3(x)  # (B, classes)


@MODELS.register("ddnet", params=DDNetParams)
def build(params: DDNetParams, info: DataInfo) -> nn.Module:
    """DDNet, the study's CIFAR-10 net: four 3x3 convs and three fc layers; 1,147,978 params."""
    return DDNet(params, info)
