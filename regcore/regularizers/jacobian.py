"""Jacobian regularization (Hoffman, Roberts, Yaida 2019, https://arxiv.org/abs/1908.02729).

Penalizes the input-output Jacobian J_b = d z_b / d x_b (C x D) of the logits:

    penalty = (weight / 2) * J2,   J2 ~ mean_b ||J_b||_F^2

estimated with random projections: for each of n_proj projections draw v_b uniform on
the unit sphere S^{C-1} per sample, u = grad(sum_b v_b . z_b, x, create_graph=True), and

    J2 = C * sum_proj sum_b ||u_b||^2 / (n_proj * B),

unbiased because E[v v^T] = I / C. ``n_proj: -1`` is exact: the C one-hot vectors give
J2 = sum_c sum_b ||grad(sum_b z_bc, x)||^2 / B = mean_b ||J_b||_F^2 (C backward passes).
The default n_proj = 1 costs about 1.3x plain training in the paper.

The study's version detached the input gradient, so its penalty was a constant that
trained nothing. Here u is taken with create_graph=True and the penalty reaches every
weight that shapes J (double backprop). The penalty differentiates the training step's
own forward pass (``needs_input_grad``), as the authors' code does: with dropout it is
the Jacobian of the dropped-out network; with batch norm in train mode the batch
statistics couple the samples and u_b also holds small cross-sample terms (see
``regcore.jacobian``).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from regcore.jacobian import (
    differentiable_forward,
    frobenius_norm_sq_of_logits,
    random_projection_frobenius_sq,
)
from regcore.registries import REGULARIZERS
from regcore.registry import ComponentParams
from regcore.regularizers.base import Regularizer, StepContext

EXACT = -1


class JacobianParams(ComponentParams):
    weight: float = Field(0.01, ge=0, description="lambda; the penalty is (lambda / 2) * J2")
    n_proj: int = Field(
        1, ge=EXACT, description="random projections per step; -1: exact, with all C classes"
    )

    @field_validator("n_proj")
    @classmethod
    def _exact_or_positive(cls, value: int) -> int:
        if value == 0:
            raise ValueError("n_proj must be -1 (exact) or at least 1")
        return value


@REGULARIZERS.register("jacobian")
class Jacobian(Regularizer):
    Params = JacobianParams
    params: JacobianParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile
    needs_input_grad = True

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        x, logits = differentiable_forward(ctx.model, ctx.inputs, ctx.logits)  # (B, ...), (B, C)
        if self.params.n_proj == EXACT:
            norms_sq = frobenius_norm_sq_of_logits(logits, x, create_graph=True)  # (B,)
        else:
            norms_sq = random_projection_frobenius_sq(
                logits, x, self.params.n_proj, create_graph=True
            )  # (B,)
        return 0.5 * self.params.weight * norms_sq.mean()
