"""ResNet-18 (He et al. 2016, https://arxiv.org/abs/1512.03385): BasicBlocks [2, 2, 2, 2].

``stem: cifar`` (default, the usual choice for 32x32 inputs): a 3x3 conv with stride 1
and no max-pool. ``stem: imagenet``: torchvision's 7x7 stride-2 conv and 3x3 stride-2
max-pool; then the parameter count equals ``torchvision.models.resnet18``'s (the cifar
stem has 64 * C * (49 - 9) fewer). Batch norm, a selectable activation (one module per
use, so learnable betas are not shared), dropout before the final fc, and torchvision's
initialization. Module names follow torchvision's (conv1, bn1, layer1..4, fc), so with
relu the state dict matches torchvision's apart from ``normalize.*``. ``batch_norm:
lipschitz`` swaps every batch norm for ``LipschitzBatchNorm2d`` (Srinivas et al. 2022:
affine scale off, each channel's gain <= a learnable gamma, initialized to ``bn_gamma``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.models.layers import ActivationName, ModelParams, input_normalization
from regcore.models.lipschitz_bn import LipschitzBatchNorm2d
from regcore.registries import MODELS
from regcore.registry import MAX_FLOAT


class ResNet18Params(ModelParams):
    activation: ActivationName = "relu"
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar", description="cifar: 3x3 conv, no max-pool; imagenet: 7x7/2 conv + 3x3/2 max-pool"
    )
    batch_norm: Literal["standard", "lipschitz"] = Field(
        "standard", description="lipschitz: gamma-Lipschitz batch norm (Srinivas et al. 2022)"
    )
    bn_gamma: float = Field(
        1.0, gt=0, le=MAX_FLOAT, description="initial gamma of the Lipschitz batch norm"
    )

    def new_batch_norm(self, channels: int) -> nn.Module:
        if self.batch_norm == "lipschitz":
            return LipschitzBatchNorm2d(channels, gamma=self.bn_gamma)
        return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm plus a shortcut (1x1 conv + bn when the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int, params: ResNet18Params) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = params.new_batch_norm(outputs)
        self.act1 = params.new_activation()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = params.new_batch_norm(outputs)
        self.act2 = params.new_activation()
        self.downsample: nn.Module | None = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                params.new_batch_norm(outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, out, H/s, W/s)
        out = self.act1(self.bn1(self.conv1(x)))  # (B, out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, out, H/s, W/s)
        return self.act2(out + identity)  # (B, out, H/s, W/s)


class ResNet18(nn.Module):
    """Shapes in the comments are for 3x32x32 inputs and the cifar stem."""

    def __init__(self, params: ResNet18Params, info: DataInfo) -> None:
        super().__init__()
        if len(info.input_shape) != 3:
            raise ValueError(
                f"resnet18 needs image inputs (C, H, W), got shape {info.input_shape}; "
                "use model mlp"
            )
        channels = info.input_shape[0]
        self.normalize = input_normalization(info, params.normalize)
        if params.stem == "cifar":
            self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = params.new_batch_norm(64)
        self.act = params.new_activation()
        self.layer1 = self._stage(64, 64, 1, params)
        self.layer2 = self._stage(64, 128, 2, params)
        self.layer3 = self._stage(128, 256, 2, params)
        self.layer4 = self._stage(256, 512, 2, params)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(params.dropout)
        self.fc = nn.Linear(512, info.num_classes)
        for module in self.modules():  # torchvision's initialization; fc keeps PyTorch's
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(inputs: int, outputs: int, stride: int, params: ResNet18Params) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(inputs, outputs, stride, params), BasicBlock(outputs, outputs, 1, params)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, 3, 32, 32)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))  # (B, 64, 32, 32); imagenet: /4
        x = self.layer1(x)  # (B, 64, 32, 32)
        x = self.layer2(x)  # (B, 128, 16, 16)
        x = self.layer3(x)  # (B, 256, 8, 8)
        x = self.layer4(x)  # (B, 512, 4, 4)
        x = self.avgpool(x).flatten(1)  # (B, 512)
        return self.fc(self.dropout(x))  # (B, classes)


@MODELS.register("resnet18", params=ResNet18Params)
def build(params: ResNet18Params, info: DataInfo) -> nn.Module:
    """ResNet-18 (He et al. 2016) with a CIFAR stem (default) or torchvision's ImageNet stem."""
    return ResNet18(params, info)
