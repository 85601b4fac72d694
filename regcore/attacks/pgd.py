"""FGSM (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572) and PGD (Madry et al. 2018,
https://arxiv.org/abs/1706.06083): untargeted attacks that maximize the cross-entropy.

Inputs live in [0, 1] and the model normalizes inside, so eps and alpha are in pixel
units. With g = grad_x CE(f(x'), y):

    FGSM:     x' = clamp01(x + eps * sign(g(x)))
    PGD Linf: x'_0 = clamp01(x + U(-eps, eps));  x'_{t+1} = P(x'_t + alpha * sign(g))
    PGD L2:   x'_0 = clamp01(x + eps * u), u uniform in the unit ball;
              x'_{t+1} = P(x'_t + alpha * g / ||g||_2)

where P projects the perturbation onto the eps-ball around x (Linf: clip each pixel;
L2: rescale delta to ||delta||_2 <= eps) and then clamps to [0, 1]. Clamping after
the projection keeps the bound: it only moves pixels back towards x. Default step
alpha = 2.5 * eps / steps (Madry et al.), so the iterates can cross the ball.

With ``restarts > 1`` each sample keeps the first restart that misclassifies it, else
the one with the highest loss. Within a restart the last iterate is returned (Madry).

During an attack the model is in eval mode (dropout off, batch norm on its running
statistics, so samples do not interact) and its mode is restored after. Gradients are
taken with ``torch.autograd.grad`` with respect to the input only, so nothing is
accumulated into the parameters' ``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["linf", "l2"]
_TINY = 1e-12  # guards per-sample divisions by a zero gradient or perturbation norm


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model (every submodule) in eval mode; restore each submodule's mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) per-sample grad_x CE(f(x_b), y_b), detached; the parameters get no .grad.

    The summed (not mean) loss makes each row the gradient of that sample's own loss.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, 1, ..., 1) L2 norm of each sample, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _random_start(x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        delta = (2 * torch.rand_like(x) - 1) * eps  # U(-eps, eps) per pixel
    else:
        # Uniform in the L2 ball: a Gaussian direction, radius eps * U^(1/D).
        direction = torch.randn_like(x)
        direction = direction / _per_sample_norm(direction).clamp_min(_TINY)
        dims = x[0].numel()
        radius = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1 / dims)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Onto {x' : ||x' - x|| <= eps} (in the given norm), then into [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        # Shrink only the samples outside the ball; eps / ||delta|| >= 1 inside it.
        scale = (eps / _per_sample_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
        delta = delta * scale
    return (x + delta).clamp(0.0, 1.0)


def _check(eps: float, norm: str, steps: int, restarts: int) -> None:
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0; got {eps}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1; got {steps} and {restarts}")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """x' = clamp01(x + eps * sign(grad_x CE)): one Linf step from x, no random start."""
    _check(eps, "linf", 1, 1)
    x = x.detach()
    if eps == 0:
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)  # (B, ...)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def _pgd_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Norm,
    steps: int,
    alpha: float,
    random_start: bool,
) -> torch.Tensor:
    x_adv = _random_start(x, eps, norm) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)  # (B, ...)
        # L2: a zero gradient gives a zero step, not a nan.
        step = grad.sign() if norm == "linf" else grad / _per_sample_norm(grad).clamp_min(_TINY)
        x_adv = _project(x_adv + alpha * step, x, eps, norm)
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
) -> torch.Tensor:
    """Untargeted PGD in pixel space: (B, ...) inputs in [0, 1] -> adversarial examples.

    ``alpha`` defaults to 2.5 * eps / steps. Without a random start every restart would
    be the same, so ``restarts`` only matters with ``random_start``. Randomness comes
    from torch's global generator.
    """
    _check(eps, norm, steps, restarts)
    x = x.detach()
    if eps == 0:  # the ball is the point x: no attack can move
        return x.clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    runs = restarts if random_start else 1
    with eval_mode(model):
        best = _pgd_once(model, x, y, eps, norm, steps, alpha, random_start)
        if runs == 1:
            return best
        with torch.no_grad():
            logits = model(best)  # (B, C)
            best_loss = F.cross_entropy(logits, y, reduction="none")  # (B,)
            best_fooled = logits.argmax(dim=1) != y  # (B,)
        for _ in range(runs - 1):
            candidate = _pgd_once(model, x, y, eps, norm, steps, alpha, random_start)
            with torch.no_grad():
                logits = model(candidate)
                loss = F.cross_entropy(logits, y, reduction="none")
                fooled = logits.argmax(dim=1) != y
            # A sample already fooled keeps its first success; others take a success or
            # a higher loss.
            take = ~best_fooled & (fooled | (loss > best_loss))  # (B,)
            mask = take.view(-1, *([1] * (x.dim() - 1)))
            best = torch.where(mask, candidate, best)
            best_loss = torch.where(take, loss, best_loss)
            best_fooled = best_fooled | fooled
    return best
