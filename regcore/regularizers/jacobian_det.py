"""Jacobian determinant (volume preservation), as regbench defines it.

A classifier's input-output Jacobian J_b = d z_b / d x_b is C x D with C << D (10 x 784
for MNIST), so J_b^T J_b (D x D) has rank at most C and det(J_b^T J_b) = 0 for every
network: the study's determinant term was meaningless. regbench puts the volume term on
the C x C Gram matrix instead, which is generically full rank:

    penalty = weight * mean_b ( log det(J_b J_b^T + delta I_C) )^2

It is zero when the map x -> z preserves C-dimensional volume (det(J J^T + delta I) = 1)
and grows as the network squeezes (log det -> C log delta) or stretches its input
space; delta keeps the log finite where J_b is rank-deficient. The log-determinant is
2 sum_i log L_ii of the Cholesky factor L (the matrix is symmetric positive definite
for delta > 0).

J_b is exact: C vector-Jacobian products on a batch (``regcore.jacobian``), taken with
create_graph=True so the penalty trains the weights. It is computed on its own forward
pass in eval mode (restored after), on the first ``subsample`` samples of the batch if
set: eval mode makes every sample independent (batch norm on its running statistics)
so the batched VJPs give each sample's own Jacobian, and the extra forward neither
draws new dropout masks nor moves batch norm's running statistics.
"""

from __future__ import annotations

import torch
from pydantic import Field

from regcore.attacks.pgd import eval_mode
from regcore.jacobian import input_jacobian
from regcore.registries import REGULARIZERS
from regcore.registry import ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class JacobianDetParams(ComponentParams):
    weight: float = Field(1e-3, ge=0, description="lambda")
    delta: float = Field(1e-3, gt=0, description="ridge added to the C x C Gram matrix J J^T")
    subsample: int | None = Field(
        None, ge=1, description="use only the first k samples of each batch (cost: C VJPs on k)"
    )


def gram_log_det(jacobian: torch.Tensor, delta: float) -> torch.Tensor:
    """(B, C, D) Jacobians -> (B,) log det(J_b J_b^T + delta I), differentiable."""
    gram = jacobian @ jacobian.transpose(1, 2)  # (B, C, C)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    factor = torch.linalg.cholesky(gram + delta * eye)  # (B, C, C) lower triangular
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)  # (B,)


@REGULARIZERS.register("jacobian_det")
class JacobianDet(Regularizer):
    Params = JacobianDetParams
    params: JacobianDetParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        x = ctx.inputs.detach()
        if self.params.subsample is not None:
            x = x[: self.params.subsample]  # (k, ...)
        with eval_mode(ctx.model):
            jacobian = input_jacobian(ctx.model, x, create_graph=True)  # (k, C, D)
        log_det = gram_log_det(jacobian, self.params.delta)  # (k,)
        return self.params.weight * log_det.pow(2).mean()
