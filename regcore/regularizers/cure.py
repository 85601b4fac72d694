"""CURE, curvature regularization (Moosavi-Dezfooli, Fawzi, Uesato, Frossard 2019,
https://arxiv.org/abs/1811.09716).

A finite-difference penalty on the loss's curvature along the gradient's sign:

    penalty = weight * mean_b || grad_x l_b(x_b + h z_b) - grad_x l_b(x_b) ||_2^2,
    z_b = sign(grad_x l_b(x_b)) / || sign(grad_x l_b(x_b)) ||_2

with l_b the cross-entropy of sample b alone, so ||h z_b||_2 = h: h is an L2 length in
pixel units, and each pixel moves by h / sqrt(D) (D pixels per sample). Both
gradients are taken with create_graph=True so the penalty trains the weights. z is
detached, as in the paper; this is exact, not an approximation: sign() is piecewise
constant, so its derivative is 0 wherever it is defined. A sample whose input gradient
is exactly 0 gets z = 0 (and a zero penalty). x + h z is not clamped to [0, 1]: the
penalty is about the function's curvature, not about valid images.

Defaults: weight = 4 is the paper's lambda (also the authors' code default). The
authors' code grows h over the first epochs up to a few units on its own input scale;
here h is in [0, 1] pixel units and h = 1.5 moves each CIFAR-10 pixel (D = 3072) by
1.5 / sqrt(3072) = 7/255, the scale of the usual 8/255 budget. For other inputs pick
h ~ eps * sqrt(D) for the Linf budget eps of interest (MNIST at 0.3: h ~ 8.4; 8x8
digits at 0.1: h ~ 0.8). h is fixed here (no warm-up).

Both gradients are computed with the model in eval mode (as in the authors' code):
in training mode the two forward passes would draw different dropout masks, whose
difference is noise rather than curvature, and batch norm's batch statistics would
couple the samples. The authors' code also drops the square (it penalizes the norm) and
differentiates the batch-mean loss (each gradient shrunk by 1/B); this follows the
paper's formula instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regcore.attacks.pgd import eval_mode
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class CUREParams(ComponentParams):
    weight: float = Field(4.0, ge=0, le=MAX_WEIGHT, description="lambda")
    h: float = Field(
        1.5,
        gt=0,
        le=MAX_FLOAT,
        description="L2 length of the finite-difference step, in pixel units",
    )


def _sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) grad_x l_b, kept in the graph so a penalty on it reaches the weights."""
    loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: row b is grad of l_b alone
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    return grad


def curvature_differences(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float
) -> torch.Tensor:
    """(B,) ||grad_x l_b(x_b + h z_b) - grad_x l_b(x_b)||^2, differentiable in the weights."""
    x = x.detach().requires_grad_(True)  # a fresh leaf: the loop's inputs stay untouched
    with torch.enable_grad():
        grad = _sample_gradients(model, x, y)  # (B, ...)
        z = grad.detach().sign()
        z_norm = z.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,); 0 only where z = 0
        z = z / z_norm.view(-1, *([1] * (x.dim() - 1)))
        shifted = (x.detach() + h * z).requires_grad_(True)
        grad_shifted = _sample_gradients(model, shifted, y)  # (B, ...)
        return (grad_shifted - grad).flatten(1).pow(2).sum(dim=1)


@REGULARIZERS.register("cure")
class CURE(Regularizer):
    Params = CUREParams
    params: CUREParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile
    stack_note = "stacked seeds run its forward passes member by member"

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        with eval_mode(ctx.model):
            differences = curvature_differences(ctx.model, ctx.inputs, ctx.targets, self.params.h)
        return self.params.weight * differences.mean()
