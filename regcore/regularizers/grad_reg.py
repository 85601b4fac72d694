"""GradReg, double backpropagation: weight * mean_i ||grad_x loss_i||^2 (Drucker & LeCun 1992).

The gradient-norm baseline of Srinivas, Matoba, Lakkaraju, Fleuret 2022
(https://arxiv.org/abs/2206.07144), after Drucker & LeCun's double backpropagation:

    penalty = weight * mean_i || grad_x loss_i ||_2^2,   loss_i = CE(f(x_i), y_i)

with each sample's own cross-entropy (the gradient of the summed loss has
grad_x loss_i as its row i), in pixel space. The input gradient is taken with
create_graph=True, so the penalty trains the weights. Like ``jacobian`` it
differentiates the training step's own forward pass (``needs_input_grad``); with batch
norm in train mode row i also holds small cross-sample terms through the batch
statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.jacobian import differentiable_forward
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import InputGradient, Regularizer, StepContext


class GradRegParams(ComponentParams):
    weight: float = Field(0.01, ge=0, le=MAX_WEIGHT, description="lambda")


def input_gradients(
    logits: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, create_graph: bool = True
) -> torch.Tensor:
    """(B, D) grad_x CE(z_i, y_i) per sample, from logits (B, C) in the graph of x."""
    loss = F.cross_entropy(logits, targets, reduction="sum")  # sum: row i is grad of loss_i
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True, create_graph=create_graph)
    return grad.flatten(1)


@REGULARIZERS.register("grad_reg")
class GradReg(Regularizer):
    Params = GradRegParams
    params: GradRegParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile
    needs_input_grad = True

    def input_gradient_requests(self, ctx: StepContext) -> list[InputGradient]:
        x, logits = differentiable_forward(ctx.model, ctx.inputs, ctx.logits)  # (B, ...), (B, C)
        loss = F.cross_entropy(logits, ctx.targets, reduction="sum")  # row i: grad of loss_i
        return [InputGradient(loss, x)]

    def penalty_from_gradients(
        self, ctx: StepContext, gradients: list[torch.Tensor]
    ) -> torch.Tensor:
        (grad,) = gradients  # (B, ...) grad_x loss_i per sample
        return self.params.weight * grad.flatten(1).pow(2).sum(dim=1).mean()
