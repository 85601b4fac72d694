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
accumulated into the parameters' ``.grad``. ``fgsm`` (regcore.attacks.fgsm) and
``eval_mode`` / ``input_gradient`` (regcore.attacks.base) are re-exported here.

Arguments: ``eps`` a float or a per-sample (B,) tensor (then alpha's default is per
sample too), ``norm`` linf or l2 (default linf), ``steps`` 10, ``alpha`` 2.5 * eps /
steps, ``random_start`` True, ``restarts`` 1, ``generator`` torch's global one. Usual
budgets: MNIST Linf 0.3, CIFAR Linf 8/255, CIFAR L2 0.5. Shapes: x (B, ...) in [0, 1],
y (B,) -> x' (B, ...). Example, three budgets in one batched pass:

    eps = torch.tensor([0.1, 0.2, 0.3]).repeat_interleave(len(x))  # (3B,)
    x_adv = pgd(model, x.repeat(3, 1, 1, 1), y.repeat(3), eps=eps, steps=40)
    x_adv = ATTACKS.build("pgd", {"norm": "l2", "steps": 40})(model, x, y, 0.5)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regcore.attacks.base import (
    TINY,
    Attack,
    AttackParams,
    Norm,
    all_zero,
    broadcast,
    check_norm,
    eval_mode,
    input_gradient,
    per_sample,
    per_sample_norm,
)
from regcore.attacks.fgsm import fgsm
from regcore.registries import ATTACKS
from regcore.registry import MAX_COUNT, MAX_FLOAT

__all__ = ["PGD", "Norm", "PGDParams", "eval_mode", "fgsm", "input_gradient", "pgd"]


def _random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator: torch.Generator | None
) -> torch.Tensor:
    """x plus a uniform draw from the eps-ball, clamped; eps is (B, 1, ..., 1)."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * noise - 1) * eps  # U(-eps, eps) per pixel
    else:
        # Uniform in the L2 ball: a Gaussian direction, radius eps * U^(1/D).
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample_norm(direction).clamp_min(TINY)
        dims = x[0].numel()
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        delta = direction * eps * u.view(-1, *([1] * (x.dim() - 1))) ** (1 / dims)
    return (x + delta).clamp(0.0, 1.0)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Onto {x' : ||x' - x|| <= eps} (in the given norm), then into [0, 1]; eps (B, 1, ..., 1)."""
    delta = x_adv - x
    if norm == "linf":
        delta = torch.minimum(torch.maximum(delta, -eps), eps)
    else:
        # Shrink only the samples outside the ball; eps / ||delta|| >= 1 inside it.
        scale = (eps / per_sample_norm(delta).clamp_min(TINY)).clamp(max=1.0)
        delta = delta * scale
    return (x + delta).clamp(0.0, 1.0)


def _pgd_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    norm: Norm,
    steps: int,
    alpha: torch.Tensor,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)  # (B, ...)
        # L2: a zero gradient gives a zero step, not a nan.
        step = grad.sign() if norm == "linf" else grad / per_sample_norm(grad).clamp_min(TINY)
        x_adv = _project(x_adv + alpha * step, x, eps, norm)
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: Norm = "linf",
    steps: int = 10,
    alpha: float | torch.Tensor | None = None,
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD in pixel space: (B, ...) inputs in [0, 1] -> adversarial examples.

    ``eps`` is a float or a per-sample (B,) tensor; ``alpha`` (float or (B,)) defaults to
    2.5 * eps / steps, per sample. Without a random start every restart would be the same,
    so ``restarts`` only matters with ``random_start``. Random starts are drawn from
    ``generator`` (on x's device), else from torch's global generator. A sample with
    eps = 0 comes back as x itself.
    """
    check_norm(norm)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1; got {steps} and {restarts}")
    x = x.detach()
    budget = per_sample(eps, x)  # (B,) float64
    if all_zero(eps, budget):  # every ball is the point x: no attack can move
        return x.clone()
    step_size = 2.5 * budget / steps if alpha is None else per_sample(alpha, x, "alpha")
    eps_b, alpha_b = broadcast(budget, x), broadcast(step_size, x)  # (B, 1, ..., 1)
    runs = restarts if random_start else 1
    with eval_mode(model):
        best = _pgd_once(model, x, y, eps_b, norm, steps, alpha_b, random_start, generator)
        if runs == 1:
            return best
        with torch.no_grad():
            logits = model(best)  # (B, C)
            best_loss = F.cross_entropy(logits, y, reduction="none")  # (B,)
            best_fooled = logits.argmax(dim=1) != y  # (B,)
        for _ in range(runs - 1):
            candidate = _pgd_once(model, x, y, eps_b, norm, steps, alpha_b, random_start, generator)
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


class PGDParams(AttackParams):
    steps: int = Field(
        10, ge=1, le=MAX_COUNT, description="gradient steps per restart (Madry MNIST: 40)"
    )
    alpha: float | None = Field(
        None,
        gt=0,
        le=MAX_FLOAT,
        description="step size in pixel units; none: 2.5 * eps / steps per sample",
    )
    random_start: bool = Field(True, description="start from a uniform point of the eps-ball")
    restarts: int = Field(
        1, ge=1, le=MAX_COUNT, description="random restarts; a sample keeps its best"
    )


@ATTACKS.register("pgd")
class PGD(Attack):
    """PGD, Linf or L2, with random start and restarts (Madry et al. 2018)."""

    Params = PGDParams
    params: PGDParams

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        p = self.params
        return pgd(
            model, x, y, eps=eps, norm=p.norm, steps=p.steps, alpha=p.alpha,
            random_start=p.random_start, restarts=p.restarts, generator=generator,
        )  # fmt: skip
