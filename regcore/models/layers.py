"""Building blocks every model shares: input normalization, activations, common params.

Inputs arrive in [0, 1]; each model's first layer is a ``Normalize`` built from the
dataset's ``DataInfo.mean/std``, so checkpoints carry their own preprocessing.

Activations live in the small ``ACTIVATIONS`` registry: relu, tanh, softplus and
centered_softplus. Centered softplus, ``s(x) = (softplus(beta * x) - log 2) / beta``,
passes through the origin like tanh and relu, is smooth (``s'' <= beta / 4``), and
approaches relu as beta grows; its beta can be learned, one per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field, WithJsonSchema
from torch import nn

from regcore.data.base import DataInfo
from regcore.registry import MAX_FLOAT, ComponentParams, Registry, UnknownComponentError

# --------------------------------------------------------------------------- normalization


class Normalize(nn.Module):
    """``(x - mean) / std``, per channel for images (C, H, W) and per feature for vectors (D,)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], input_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) not in (1, input_shape[0]):
            raise ValueError(
                f"mean/std need 1 or {input_shape[0]} entries for inputs of shape "
                f"{tuple(input_shape)}; got {len(mean)} and {len(std)}"
            )
        if min(std) <= 0:
            raise ValueError(f"std must be positive; got {tuple(std)}")
        # (C, 1, 1) for images, (D,) for vectors: broadcasts against (B, *input_shape)
        shape = (len(mean),) + (1,) * (len(input_shape) - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    @classmethod
    def from_info(cls, info: DataInfo) -> Normalize:
        return cls(info.mean, info.std, info.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (B, *input_shape)


def input_normalization(info: DataInfo, enabled: bool) -> nn.Module:
    """A model's first layer: ``Normalize`` from the dataset's statistics, or the identity."""
    return Normalize.from_info(info) if enabled else nn.Identity()


# --------------------------------------------------------------------------- initialization


def xavier_init(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer (the study's)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- activations


class CenteredSoftplus(nn.Module):
    """``s(x) = (softplus(beta * x) - log 2) / beta``: s(0) = 0, s'(0) = 1/2, s'' <= beta / 4.

    ``beta`` is a 0-d parameter when learnable (so weight-only regularizers, which skip
    0- and 1-d tensors, leave it alone) and a buffer otherwise. It is clamped to at least
    ``MIN_BETA`` in the forward pass: dividing by a beta driven towards zero would blow up.
    """

    MIN_BETA = 1e-2

    beta: torch.Tensor

    def __init__(self, beta: float = 5.0, learnable: bool = True) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive; got {beta}")
        self.learnable = learnable
        value = torch.tensor(float(beta))
        if learnable:
            self.beta = nn.Parameter(value)
        else:
            self.register_buffer("beta", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.clamp_min(self.MIN_BETA)
        # F.softplus switches to the identity for large inputs, so nothing overflows
        return (F.softplus(beta * x) - math.log(2.0)) / beta

    def extra_repr(self) -> str:
        return f"beta={self.beta.item():.4g}, learnable={self.learnable}"


class ActivationParams(ComponentParams):
    """Activations have no params of their own; beta comes from the model's params."""


ActivationFactory = Callable[[float, bool], nn.Module]
"""``(beta, learnable_beta) -> module``; the activations without a beta ignore both."""

ACTIVATIONS: Registry[ActivationFactory] = Registry("activation")


@ACTIVATIONS.register("relu", params=ActivationParams)
def _relu(beta: float, learnable_beta: bool) -> nn.Module:
    return nn.ReLU()


@ACTIVATIONS.register("tanh", params=ActivationParams)
def _tanh(beta: float, learnable_beta: bool) -> nn.Module:
    return nn.Tanh()


@ACTIVATIONS.register("softplus", params=ActivationParams)
def _softplus(beta: float, learnable_beta: bool) -> nn.Module:
    return nn.Softplus(beta=beta)  # torch's softplus: beta is fixed, softplus(0) = log 2 / beta


@ACTIVATIONS.register("centered_softplus", params=ActivationParams)
def _centered_softplus(beta: float, learnable_beta: bool) -> nn.Module:
    return CenteredSoftplus(beta, learnable=learnable_beta)


def make_activation(name: str, beta: float = 5.0, learnable_beta: bool = True) -> nn.Module:
    """A fresh activation module; an unknown name raises ``UnknownComponentError``."""
    return ACTIVATIONS.get(name).target(beta, learnable_beta)


def _known_activation(name: str) -> str:
    try:
        ACTIVATIONS.get(name)
    except UnknownComponentError as exc:  # a KeyError: pydantic only reports ValueErrors
        raise ValueError(str(exc)) from None
    return name


ActivationName = Annotated[
    str,
    AfterValidator(_known_activation),
    WithJsonSchema(
        {
            "type": "string",
            "enum": ACTIVATIONS.names(),
            "description": "nonlinearity after each hidden layer",
        }
    ),
]
"""An activation's name, checked against ``ACTIVATIONS`` when a spec is validated."""


# --------------------------------------------------------------------------- params


class ModelParams(ComponentParams):
    """Params every model shares; each model sets its own default ``activation``."""

    activation: ActivationName
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden fc layer")
    normalize: bool = Field(True, description="normalize inputs with the dataset's mean/std")
    softplus_beta: float = Field(
        5.0,
        gt=0,
        le=MAX_FLOAT,
        description="beta of softplus and initial beta of centered_softplus",
    )
    learn_beta: bool = Field(True, description="learn centered_softplus's beta, one per layer")

    def new_activation(self) -> nn.Module:
        """A fresh activation module (one per layer: learnable betas are not shared)."""
        return make_activation(self.activation, self.softplus_beta, self.learn_beta)
