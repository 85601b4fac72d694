"""The input-output Jacobian of a classifier, J_b = d z_b / d x_b (C x D per sample), exactly.

z = f(x) are the logits (B, C) and x the inputs (B, *input_shape), D = prod(input_shape),
in pixel space (models normalize inside). Row c of every J_b comes from one
vector-Jacobian product: grad(sum_b z_bc, x) has J_b[c] as its row b, so C backward
passes give the whole batch's Jacobians (Hoffman, Roberts, Yaida 2019,
https://arxiv.org/abs/1908.02729, use the same trick with random vectors).

That row-b identity holds only when sample b's logits depend on x_b alone. It is true in
eval mode for every regcore model (batch norm on its running statistics, no dropout)
and in train mode for models without batch norm (a dropout mask is per sample, so one
draw's Jacobian is exact). Batch norm in train mode couples the samples through the
batch statistics, and row b then also holds sum_{b' != b} d z_b'c / d x_b.
``mean_frobenius_norm`` puts the model in eval mode itself; the other functions use
the model's current mode, so call them in eval mode for a per-sample Jacobian.

The ``*_of_logits`` functions differentiate an existing forward pass (the training
step's own, so a penalty costs no extra forward); the others run a forward pass on a
fresh leaf copy of x. ``subsample_forward`` is the cheap alternative for penalties: a
forward pass on k random samples of the batch only, whose per-sample mean is an unbiased
estimate of the batch mean at about k / B of the double-backward cost. With
``create_graph=True`` the results stay in the autograd graph and a penalty on them trains
the weights (double backprop); otherwise they come back detached. Only x is
differentiated: nothing accumulates in the parameters' .grad.

Input units (``InputSpace``): everything above differentiates with respect to pixel
inputs x in [0, 1]. ``in_input_space(model, "normalized", who)`` gives the composed function
z -> model(mean + std * z) of the model's own normalized input z = (x - mean) / std (its
``Normalize`` layer's statistics), so the same functions applied to it differentiate in
Hoffman et al.'s units: per channel d/dz = std * d/dx, so ||J||_F is std times the pixel
one (MNIST: 0.3081x), ||J||_F^2 and the Hessian std^2 times. A model without an input
normalization has no such z: asking for it is an error naming the caller's field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from regcore.attacks.pgd import eval_mode
from regcore.models.layers import Normalize


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (B, C), got {tuple(logits.shape)}")


def vector_jacobian_product(
    logits: torch.Tensor, x: torch.Tensor, vectors: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """(B, D) rows v_b^T J_b = grad(sum_b v_b . z_b, x), for vectors v of shape (B, C)."""
    (grad,) = torch.autograd.grad(
        logits, x, grad_outputs=vectors, retain_graph=True, create_graph=create_graph
    )
    return grad.flatten(1)  # (B, D)


def _one_hot_rows(logits: torch.Tensor, c: int) -> torch.Tensor:
    vectors = torch.zeros_like(logits)  # (B, C)
    vectors[:, c] = 1.0
    return vectors


def jacobian_of_logits(
    logits: torch.Tensor, x: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """(B, C, D) Jacobians of the logits (B, C) with respect to x (B, ...), by C VJPs."""
    _check_logits(logits)
    rows = [
        vector_jacobian_product(logits, x, _one_hot_rows(logits, c), create_graph)
        for c in range(logits.shape[1])
    ]  # C x (B, D)
    return torch.stack(rows, dim=1)  # (B, C, D)


def frobenius_norm_sq_of_logits(
    logits: torch.Tensor, x: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """(B,) ||J_b||_F^2 = sum_c ||J_b[c]||^2, accumulated class by class so the (B, C, D)
    Jacobian is never held (it would be 1.2 GB for 1000 CIFAR-100 images)."""
    _check_logits(logits)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for c in range(logits.shape[1]):
        row = vector_jacobian_product(logits, x, _one_hot_rows(logits, c), create_graph)
        total = total + row.pow(2).sum(dim=1)  # (B,)
    return total


def random_projection_frobenius_sq(
    logits: torch.Tensor, x: torch.Tensor, n_proj: int, create_graph: bool = False
) -> torch.Tensor:
    """(B,) unbiased estimate of ||J_b||_F^2 from n_proj random projections (Hoffman et al.).

    Per projection and sample, v_b is uniform on the unit sphere S^{C-1} (a normalized
    Gaussian, from torch's global generator) and u_b = v_b^T J_b; the estimate is
    C * mean_proj ||u_b||^2. Unbiased because E[v v^T] = I / C, so
    E ||v^T J_b||^2 = tr(J_b^T E[v v^T] J_b) = ||J_b||_F^2 / C.
    """
    _check_logits(logits)
    if n_proj < 1:
        raise ValueError(f"n_proj must be at least 1, got {n_proj}")
    batch, classes = logits.shape
    total = torch.zeros(batch, dtype=logits.dtype, device=logits.device)
    for _ in range(n_proj):
        v = torch.randn(batch, classes, dtype=logits.dtype, device=logits.device)  # (B, C)
        v = v / v.norm(dim=1, keepdim=True)  # uniform on the sphere: Gaussians are isotropic
        u = vector_jacobian_product(logits, x, v, create_graph)  # (B, D)
        total = total + u.pow(2).sum(dim=1)
    return classes * total / n_proj


def _forward_on_leaf(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)  # a fresh leaf: the caller's tensor is untouched
    return x, model(x)  # (B, ...), (B, C)


def differentiable_forward(
    model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, logits) with the logits in the autograd graph of x.

    In the training loop a regularizer with ``needs_input_grad`` gets inputs that
    require grad and the logits of that very forward pass: both are reused (the
    penalty differentiates the training forward, dropout masks and all). Otherwise
    (inputs built without grad) the model runs again, in its current mode, on a leaf copy.
    """
    if inputs.requires_grad and logits.requires_grad:
        return inputs, logits
    with torch.enable_grad():
        return _forward_on_leaf(model, inputs)


def random_subset(inputs: torch.Tensor, k: int) -> torch.Tensor:
    """k samples of the batch (B, ...) drawn uniformly without replacement, by torch's
    global generator; the whole batch, in order and without a draw, when k >= B.

    A mean over the subset of any per-sample quantity is an unbiased estimate of its batch
    mean (every sample is in the subset with probability k / B). Not the first k: a batch
    need not be shuffled, and the first k would make the estimate biased for this batch.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    batch = inputs.shape[0]
    if k >= batch:
        return inputs
    index = torch.randperm(batch, device=inputs.device)[:k]  # (k,)
    return inputs[index]  # (k, ...)


def _keeps_running_statistics(module: nn.Module) -> bool:
    # batch norm (nn.BatchNorm*, regcore's LipschitzBatchNorm2d) and anything shaped like it
    return isinstance(getattr(module, "running_mean", None), torch.Tensor)


@contextmanager
def running_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Modules that keep running statistics in eval mode for the duration (restored after),
    the rest of the model in its own mode. An extra training-mode forward then draws fresh
    dropout masks like the training forward, but normalizes with the running statistics:
    it neither moves them nor couples the samples through batch statistics."""
    switched = [m for m in model.modules() if m.training and _keeps_running_statistics(m)]
    for module in switched:
        module.train(False)
    try:
        yield
    finally:
        for module in switched:
            module.train(True)


def subsample_forward(
    model: nn.Module, inputs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, logits) of a fresh forward pass on k random samples of the batch
    (``random_subset``), x a leaf that requires grad, the logits in its graph; the model in
    its own mode except for its running statistics (``running_statistics_frozen``)."""
    with torch.enable_grad(), running_statistics_frozen(model):
        return _forward_on_leaf(model, random_subset(inputs.detach(), k))  # (k, ...), (k, C)


def input_jacobian(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """(B, C, D) exact per-sample Jacobians of model(x) (see the module notes on the mode)."""
    with torch.enable_grad():
        leaf, logits = _forward_on_leaf(model, x)
        jacobian = jacobian_of_logits(logits, leaf, create_graph)
    return jacobian if create_graph else jacobian.detach()


def replicated_input_jacobian(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    create_graph: bool = False,
    max_rows: int = 512,
) -> torch.Tensor:
    """(B, C, D) exact per-sample Jacobians of model(x), the batch copied once per class.

    Copy c of sample b is differentiated along the one-hot e_c, so one backward pass over
    the C copies gives all of J_b's rows: the backward's arithmetic of C separate VJPs in
    one pass of C-times larger operations (C times fewer kernel launches and autograd
    nodes, which dominate for a few samples), for C - 1 extra forward copies. Classes go
    in chunks of at most ``max_rows`` copies (memory). The copies must see the same
    network: call it in eval mode (no dropout draws, no batch statistics).
    """
    batch = x.shape[0]
    per_pass = max(1, min(num_classes, max_rows // max(batch, 1)))
    rows = []
    with torch.enable_grad():
        for first in range(0, num_classes, per_pass):
            classes = min(per_pass, num_classes - first)
            copies = x.detach().repeat(classes, *[1] * (x.ndim - 1))  # (classes * B, ...)
            copies.requires_grad_(True)
            logits = model(copies)  # (classes * B, C)
            _check_logits(logits)
            one_hot = torch.zeros_like(logits)
            for c in range(classes):
                one_hot[c * batch : (c + 1) * batch, first + c] = 1.0
            grad = vector_jacobian_product(logits, copies, one_hot, create_graph)
            rows.append(grad.view(classes, batch, -1).transpose(0, 1))  # (B, classes, D)
    jacobian = torch.cat(rows, dim=1)  # (B, C, D)
    return jacobian if create_graph else jacobian.detach()


def frobenius_norm_sq(
    model: nn.Module, x: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """(B,) exact ||J_b||_F^2 of model(x), without holding the whole Jacobian."""
    with torch.enable_grad():
        leaf, logits = _forward_on_leaf(model, x)
        norms = frobenius_norm_sq_of_logits(logits, leaf, create_graph)
    return norms if create_graph else norms.detach()


def mean_frobenius_norm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> float:
    """mean_b ||J_b||_F over the samples x (N, ...), exact, in eval mode (restored after).

    The metric of Hoffman et al.'s tables (MNIST LeNet: 32.9 unregularized, 1.1 with
    Jacobian regularization), there measured on test images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(x) == 0:
        return math.nan
    total = 0.0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            norms_sq = frobenius_norm_sq(model, x[start : start + batch_size])  # (b,)
            total += norms_sq.double().sqrt().sum().item()
    return total / len(x)


# --------------------------------------------------------------------------- input units

InputSpace = Literal["pixel", "normalized"]
INPUT_SPACE_DESCRIPTION = (
    "units of the input the derivatives are taken in: pixel, x in [0, 1] (regcore's "
    "convention); normalized, z = (x - mean) / std as the model's first layer computes it "
    "(Hoffman et al.'s code: ||J||_F is std times the pixel one, ||J||_F^2 and ||H|| std^2 "
    "times, per channel); needs a model with normalize: true"
)


def input_space_field() -> Any:
    """The ``input_space`` param of a component: pixel by default, and part of the spec
    hash only when not pixel (``regcore.spec.IDENTITY_UNLESS_DEFAULT``, written out here
    because the spec module imports the registries), so every spec written before the
    param existed keeps its hash."""
    return Field(
        "pixel",
        description=INPUT_SPACE_DESCRIPTION,
        json_schema_extra={"identity": "unless_default"},
    )


def input_normalizer(model: nn.Module, who: str) -> Normalize:
    """The model's input normalization (its first ``Normalize`` module, the member's own in
    a stacked step). A model without one has no normalized input to differentiate: an
    error naming ``who``'s field, rather than silently measuring in pixel units."""
    for module in model.modules():
        if isinstance(module, Normalize):
            return module
    raise ValueError(
        f"{who}: input_space 'normalized' needs a model with an input normalization "
        "(model param normalize: true); this model has none: use input_space 'pixel'"
    )


def pixel_from_normalized(normalizer: Normalize, z: torch.Tensor) -> torch.Tensor:
    """x = mean + std * z (B, ...): the inverse of the model's normalization, the change of
    variables every normalized-space derivative goes through."""
    return normalizer.mean + normalizer.std * z


class NormalizedInputModel(nn.Module):
    """The composed function z -> model(mean + std * z): the model as a function of its
    normalized input z = (x - mean) / std. Derivatives of it with respect to z are the
    model's derivatives in normalized units (per channel, std * d/dx); ``to_input(x)``
    maps pixel inputs to z. Modes (train/eval) pass through to the model."""

    def __init__(self, model: nn.Module, who: str) -> None:
        super().__init__()
        self.model = model
        self.normalizer = input_normalizer(model, who)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.normalizer.mean) / self.normalizer.std  # (B, ...) z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_from_normalized(self.normalizer, z))  # (B, C)


def in_input_space(
    model: nn.Module, space: InputSpace, who: str
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(function, to_input): the model as a function of inputs in ``space`` and the map from
    pixel inputs to them. Pixel: the model itself and the identity."""
    if space == "pixel":
        return model, lambda x: x
    composed = NormalizedInputModel(model, who)
    return composed, composed.to_input


def pixel_gradient_to_normalized(
    normalizer: Normalize, x: torch.Tensor, gradient: torch.Tensor
) -> torch.Tensor:
    """A gradient u_x = d(...)/dx (B, ...) taken at pixel inputs x, as the gradient with
    respect to z = (x - mean) / std: the vector-Jacobian product of the change of variables
    z -> mean + std * z at z, (dx/dz)^T u_x, taken by autograd on that map (per channel
    std * u_x). create_graph keeps u_z in the graph of u_x, so a penalty on it still
    trains the weights; used where the training forward's own graph starts at x."""
    with torch.enable_grad():
        z = ((x.detach() - normalizer.mean) / normalizer.std).requires_grad_(True)
        (normalized,) = torch.autograd.grad(
            pixel_from_normalized(normalizer, z), z, grad_outputs=gradient, create_graph=True
        )
    return normalized  # (B, ...)
