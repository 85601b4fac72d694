"""FGSM, the fast gradient sign method (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572).

Distance: Linf, in pixel units on inputs in [0, 1]. One step from x, no random start:

    x' = clamp01(x + eps * sign(grad_x CE(f(x), y)))

Arguments: ``eps`` a float or a per-sample (B,) tensor (default budgets: MNIST 0.3,
CIFAR 8/255). Shapes: x (B, ...) in [0, 1], y (B,) -> x' (B, ...). Example:

    x_adv = fgsm(model, x, y, 0.1)
    x_adv = ATTACKS.build("fgsm")(model, x, y, torch.tensor([0.05, 0.1, 0.3]))
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from regcore.attacks.base import (
    Attack,
    AttackParams,
    all_zero,
    broadcast,
    eval_mode,
    input_gradient,
    per_sample,
)
from regcore.registries import ATTACKS


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """x' = clamp01(x + eps * sign(grad_x CE)): one Linf step from x; eps float or (B,)."""
    x = x.detach()
    budget = per_sample(eps, x)  # (B,) float64
    if all_zero(eps, budget):
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)  # (B, ...)
    return (x + broadcast(budget, x) * grad.sign()).clamp(0.0, 1.0)


class FGSMParams(AttackParams):
    norm: Literal["linf"] = Field("linf", description="FGSM is a Linf attack")


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """FGSM: one signed-gradient Linf step of size eps (Goodfellow et al. 2015)."""

    Params = FGSMParams
    params: FGSMParams

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        return fgsm(model, x, y, eps)
