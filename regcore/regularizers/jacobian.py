"""Jacobian regularization (Hoffman, Roberts, Yaida 2019, https://arxiv.org/abs/1908.02729).

Penalizes the input-output Jacobian J_b = d z_b / d x_b (C x D) of the logits:

    penalty = (weight / 2) * J2,   J2 ~ mean_b ||J_b||_F^2

estimated with random projections: for each of n_proj projections draw v_b uniform on
the unit sphere S^{C-1} per sample, u = grad(sum_b v_b . z_b, x, create_graph=True), and

    J2 = C * sum_proj sum_b ||u_b||^2 / (n_proj * B),

unbiased because E[v v^T] = I / C. ``n_proj: -1`` is exact: the C one-hot vectors give
J2 = sum_c sum_b ||grad(sum_b z_bc, x)||^2 / B = mean_b ||J_b||_F^2 (C backward passes).
The default n_proj = 1 costs about 1.3x plain training in the paper (GPU). Here, LeNet
on MNIST batches of 100, CPU time with one thread, median [min, max] of 21 interleaved
rounds on a busy 2-core machine (``python -m bench.jacobian_cost``), a step costs 1.92x
[1.44, 2.44] a plain one: one VJP with create_graph on the training forward itself, and
the step backpropagates into the weights only (no unused input gradient).

The study's version detached the input gradient, so its penalty was a constant that
trained nothing. Here u is taken with create_graph=True and the penalty reaches every
weight that shapes J (double backprop). The penalty differentiates the training step's
own forward pass (``needs_input_grad``), as the authors' code does: with dropout it is
the Jacobian of the dropped-out network; with batch norm in train mode the batch
statistics couple the samples and u_b also holds small cross-sample terms (see
``regcore.jacobian``).

Cheap mode, ``subsample: k``: the same estimator on k samples drawn at random from the
batch (``regcore.jacobian.random_subset``), on a forward pass of their own (k / B of a
forward; the model in its training mode, so dropout draws fresh masks as the training
forward did, but batch norm on its running statistics, which that forward does not move):

    J2 = C * sum_proj sum_{b in S} ||u_b||^2 / (n_proj * k),   S random, |S| = k.

Every sample is in S with probability k / B, so J2 stays an unbiased estimate of the batch
mean_b ||J_b||_F^2 (for dropout: of its mean over the masks, as in the whole-batch mode),
and the double backward runs on k samples instead of B. Its estimator error against the
exact whole-batch value (n_proj -1), one MNIST batch of 100, LeNet in eval mode, 2000
draws each, at initialization and after 60 plain steps (one epoch of 6,000 images;
``python -m bench.jacobian_cost --trained``); bias: mean of the draws minus exact,
relative, with its standard error; std: relative standard deviation of one draw:

    estimator                 random LeNet (exact 16.15)  after 60 steps (exact 314.9)
                              bias (se)           std     bias (se)           std
    n_proj 1, whole batch     +0.09% (0.06%)     2.6%     +0.13% (0.14%)     6.4%
    n_proj 1, subsample 10    +0.05% (0.26%)    11.5%     -0.16% (0.71%)    31.6%
    n_proj 1, subsample 20    +0.18% (0.18%)     7.9%     +0.52% (0.48%)    21.6%
    exact,    subsample 10    +0.13% (0.19%)     8.6%     +0.44% (0.57%)    25.6%

No bias beyond 1.6 standard errors (tests check unbiasedness on a small network). The
projection adds little spread; the subsample adds most of it, more as training spreads
the samples' Jacobian norms apart (std ~ 1/sqrt(k)). Step cost, measured as above:
subsample 10 1.33x [1.02, 1.82], subsample 20 1.51x [1.24, 2.27] a plain step.

Input units, ``input_space``: pixel (default) differentiates with respect to x in [0, 1];
normalized with respect to the model's normalized input z = (x - mean) / std, as the
authors' code does (it normalizes in the data loader). Then J_z = J_x diag(std) per
channel, so J2 and the penalty are std^2 times the pixel ones (MNIST: 0.0949x; their
lambda_JR 0.01 is about 0.00095 in pixel units): the same lambda means a 10.5x weaker
penalty on MNIST. The cheap mode differentiates the composed function z -> model(mean +
std * z) on its own forward; the whole-batch mode differentiates the training forward at
x and takes u_z = (dx/dz)^T u_x through that same map (``regcore.jacobian``). Either way
the penalty reaches the weights. A model without an input normalization
(``normalize: false``) with input_space normalized is an error at setup.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from regcore.data.base import DataInfo
from regcore.jacobian import (
    InputSpace,
    NormalizedInputModel,
    differentiable_forward,
    input_normalizer,
    input_space_field,
    pixel_gradient_to_normalized,
    subsample_forward,
)
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_SAMPLES, MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import InputGradient, Regularizer, StepContext

EXACT = -1


class JacobianParams(ComponentParams):
    weight: float = Field(
        0.01, ge=0, le=MAX_WEIGHT, description="lambda; the penalty is (lambda / 2) * J2"
    )
    n_proj: int = Field(
        1,
        ge=EXACT,
        le=MAX_COUNT,
        description="random projections per step (1: ~1.9x a plain step, LeNet batch 100, "
        "CPU); -1: exact, with all C classes (C backward passes)",
    )
    subsample: int | None = Field(
        None,
        ge=1,
        le=MAX_SAMPLES,
        description="cheap mode: the penalty on k random samples of each batch, on their own "
        "forward pass (unbiased for the batch mean; k 10: ~1.3x a plain step, k 20: ~1.5x, "
        "LeNet batch 100, CPU); none: the whole batch, the training forward's own",
    )
    input_space: InputSpace = input_space_field()

    @field_validator("n_proj")
    @classmethod
    def _exact_or_positive(cls, value: int) -> int:
        if value == 0:
            raise ValueError("n_proj must be -1 (exact) or at least 1")
        return value


@REGULARIZERS.register("jacobian")
class Jacobian(Regularizer):
    """Jacobian penalty (Hoffman 2019), input units pixel or normalized: ~1.9x a plain step."""

    Params = JacobianParams
    params: JacobianParams
    double_backward = True  # the penalty is a gradient's norm: fp32, no torch.compile
    stack_note = (
        "stacked seeds take their projections in one backward pass; subsample's own "
        "forward passes run member by member"
    )

    @property
    def needs_input_grad(self) -> bool:  # type: ignore[override]
        """Only the whole-batch mode differentiates the training forward; the cheap mode
        runs a forward of its own, so the training forward need not track its input."""
        return self.params.subsample is None

    def setup(self, model: torch.nn.Module, info: DataInfo) -> torch.nn.Module:
        if self.params.input_space == "normalized":  # fail before training, not at step 1
            input_normalizer(model, "jacobian")
        return model

    # The penalty goes through ``input_gradient_requests``: u = v^T J for each projection
    # v, so that stacked seeds (regcore.stacked) take them all in one backward pass.

    def input_gradient_requests(self, ctx: StepContext) -> list[InputGradient]:
        k = self.params.subsample
        if k is None:  # the training forward itself: x (B, ...), logits (B, C)
            x, logits = differentiable_forward(ctx.model, ctx.inputs, ctx.logits)
        elif self.params.input_space == "normalized":  # its own forward, of z: (k, ...), (k, C)
            composed = NormalizedInputModel(ctx.model, "jacobian")
            x, logits = subsample_forward(composed, composed.to_input(ctx.inputs), k)
        else:  # a forward pass of its own on k random samples: x (k, ...), logits (k, C)
            x, logits = subsample_forward(ctx.model, ctx.inputs, k)
        return [InputGradient(logits, x, v) for v in projections(logits, self.params.n_proj)]

    def penalty_from_gradients(
        self, ctx: StepContext, gradients: list[torch.Tensor]
    ) -> torch.Tensor:
        if self.params.input_space == "normalized" and self.params.subsample is None:
            # taken at pixel x on the training forward: u_z = (dx/dz)^T u_x
            normalizer = input_normalizer(ctx.model, "jacobian")
            gradients = [pixel_gradient_to_normalized(normalizer, ctx.inputs, u) for u in gradients]
        norms_sq = torch.stack([u.flatten(1).pow(2).sum(dim=1) for u in gradients]).sum(0)
        if self.params.n_proj != EXACT:  # C * mean over projections: unbiased for ||J||_F^2
            norms_sq = ctx.logits.shape[1] * norms_sq / self.params.n_proj
        return 0.5 * self.params.weight * norms_sq.mean()  # norms_sq: (B or k,)


def projections(logits: torch.Tensor, n_proj: int) -> list[torch.Tensor]:
    """The vectors v (B, C) of the estimate, as ``random_projection_frobenius_sq`` and
    ``frobenius_norm_sq_of_logits`` draw them: n_proj uniform on the unit sphere, from
    torch's global generator; or, exact, the C one-hot vectors."""
    batch, classes = logits.shape
    if n_proj == EXACT:
        vectors = []
        for c in range(classes):
            one_hot = torch.zeros_like(logits)  # (B, C)
            one_hot[:, c] = 1.0
            vectors.append(one_hot)
        return vectors
    vectors = []
    for _ in range(n_proj):
        v = torch.randn(batch, classes, dtype=logits.dtype, device=logits.device)  # (B, C)
        vectors.append(v / v.norm(dim=1, keepdim=True))  # uniform on the sphere
    return vectors
