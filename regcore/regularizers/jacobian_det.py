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

J_b is exact: one backward pass over C copies of the samples, copy c differentiated along
the one-hot e_c (``regcore.jacobian.replicated_input_jacobian``: the arithmetic of C
vector-Jacobian products in C times fewer, larger operations; at k = 4 and 8 samples its
extra cost is 20-35% below that of C separate VJPs on LeNet, CPU, and a GPU gains more),
taken with create_graph=True so the penalty trains the weights. It runs
on its own forward pass in eval mode (restored after): eval mode makes every sample and
copy independent (batch norm on its running statistics) so the batched VJPs give each
sample's own Jacobian, and the extra forward neither draws dropout masks nor moves batch
norm's running statistics.

Amortized. The exact J costs C double-backward VJPs per sample (18x a plain step on the
whole batch of 100, LeNet, CPU), so by default the penalty is taken on ``subsample`` = 4
samples drawn at random from each batch (``regcore.jacobian.random_subset``):

    penalty = weight * mean_{b in S} (log det(J_b J_b^T + delta I))^2,   S random, |S| = k

Each sample is in S with probability k / B, so this is an UNBIASED estimate of the
whole-batch penalty, and its gradient of the whole-batch gradient: the square is taken
per sample, before any averaging (only a function of a subsample mean, such as
(mean_S log det)^2, would be biased). What it costs is variance: one estimate's relative
standard deviation at k = 4 of 100 is 63% on a random LeNet and 31% after 60 plain steps
(an epoch of 6,000 images), with biases of -0.85% +- 1.41% and -0.44% +- 0.69% of the
whole-batch value (2000 draws, ``python -m bench.jacobian_cost --trained``); k = 8 gives
about 1/sqrt(2) of that spread.
Not the first k samples: an unshuffled batch would then always give the same ones.

``every`` = m > 1 amortizes further: the penalty is taken on every m-th optimizer step
only (``ctx.step`` % m == 0, so nothing to checkpoint) with its weight multiplied by m,
and is absent (None) on the others. Over m consecutive steps the penalty's gradient then
sums to what m steps of it would give, up to how far the weights move within those m
steps: unbiased for the trajectory only to that order, with the gradient in bursts of
m times the weight. The logged ``reg/jacobian_det`` stays an estimate of the mean penalty
(m times the value on 1 step in m). Costs (LeNet, MNIST batch 100, CPU time, one thread,
median [min, max] of 21 interleaved rounds, ``python -m bench.jacobian_cost``): the whole
batch 18.1x [14.7, 24.2] a plain step, subsample 8 2.57x [2.05, 3.69], the default
subsample 4 1.89x [1.57, 2.80]; every m divides the extra cost by about m (another run:
subsample 4 1.94x, with every 2 1.50x; subsample 8 with every 2 1.86x).
"""

from __future__ import annotations

import torch
from pydantic import Field

from regcore.attacks.pgd import eval_mode
from regcore.jacobian import random_subset, replicated_input_jacobian
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_FLOAT, MAX_SAMPLES, MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext

DEFAULT_SUBSAMPLE = 4  # samples a step; keeps the step under 3x a plain one (LeNet)


class JacobianDetParams(ComponentParams):
    weight: float = Field(1e-3, ge=0, le=MAX_WEIGHT, description="lambda")
    delta: float = Field(
        1e-3, gt=0, le=MAX_FLOAT, description="ridge added to the C x C Gram matrix J J^T"
    )
    subsample: int | None = Field(
        DEFAULT_SUBSAMPLE,
        ge=1,
        le=MAX_SAMPLES,
        description="the penalty on k random samples of each batch, unbiased for the batch "
        "mean (default 4: ~1.9x a plain step, 8: ~2.6x, LeNet batch 100, CPU); none: the "
        "whole batch (~18x)",
    )
    every: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="take the penalty on every m-th step only, with weight * m (its extra "
        "cost divided by ~m; the same gradient over m steps up to the weights' drift)",
    )


def gram_log_det(jacobian: torch.Tensor, delta: float) -> torch.Tensor:
    """(B, C, D) Jacobians -> (B,) log det(J_b J_b^T + delta I), differentiable."""
    gram = jacobian @ jacobian.transpose(1, 2)  # (B, C, C)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    factor = torch.linalg.cholesky(gram + delta * eye)  # (B, C, C) lower triangular
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)  # (B,)


@REGULARIZERS.register("jacobian_det")
class JacobianDet(Regularizer):
    """Volume term mean (log det(J J^T + delta I))^2 on 4 random samples: ~1.9x a plain step."""

    Params = JacobianDetParams
    params: JacobianDetParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile
    stack_note = "stacked seeds run its Jacobians member by member"

    def penalty(self, ctx: StepContext) -> torch.Tensor | None:
        if ctx.step % self.params.every != 0:
            return None
        x = ctx.inputs.detach()  # (B, ...)
        if self.params.subsample is not None:
            x = random_subset(x, self.params.subsample)  # (k, ...)
        classes = ctx.logits.shape[1]
        with eval_mode(ctx.model):  # the copies must see one network
            jacobian = replicated_input_jacobian(ctx.model, x, classes, create_graph=True)
        log_det = gram_log_det(jacobian, self.params.delta)  # (k,)
        return self.params.weight * self.params.every * log_det.pow(2).mean()
