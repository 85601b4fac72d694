"""What every attack shares: the call interface, eval mode, input gradients, budgets and norms.

A registered attack is a class with a ``Params`` model (a subclass of
:class:`AttackParams`, so it has a ``norm``) built from its params; calling it attacks
a batch:

    attack = ATTACKS.build("pgd", {"norm": "linf", "steps": 40})
    x_adv = attack(model, x, y, eps)  # x: (B, ...) in [0, 1], y: (B,), eps: float or (B,)

``eps`` is a float or a per-sample (B,) tensor, so one call can attack the same examples
at several budgets (repeat them once per eps). The base class owns the setup and
teardown: inputs are detached, eps is checked, rows with eps = 0 come back as x itself,
the model is in eval mode during the attack (each submodule's mode is restored after)
and the result is clamped to [0, 1]. A concrete attack writes only ``perturb``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regcore.registry import ComponentParams

Norm = Literal["linf", "l2"]
TINY = 1e-12  # guards per-sample divisions by a zero gradient or perturbation norm


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


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, 1, ..., 1) L2 norm of each sample, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def distances(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """(B,) ||x_adv_b - x_b|| in the given norm."""
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


def check_norm(norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}")


def per_sample(value: float | torch.Tensor, x: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """A float or a (B,) tensor as a (B,) float64 tensor on x's device; finite and >= 0.

    Float64, so quantities derived from it (alpha = 2.5 * eps / steps) round exactly as
    the same formula on Python floats does before the cast to x's dtype. A float is
    checked on the host; only a tensor costs a device sync (adversarial training passes
    floats at every step).
    """
    batch = x.shape[0]
    if not isinstance(value, torch.Tensor):
        if not math.isfinite(value) or value < 0:  # isfinite also rejects nan
            raise ValueError(f"{name} must be a finite number >= 0; got {value}")
        return torch.full((batch,), float(value), dtype=torch.float64, device=x.device)
    values = value.detach().to(device=x.device, dtype=torch.float64)
    if values.dim() == 0:
        values = values.expand(batch)
    if values.shape != (batch,):
        raise ValueError(f"{name} must be a float or a ({batch},) tensor; got {value.shape}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0; got {value}")
    return values


def all_zero(value: float | torch.Tensor, budget: torch.Tensor) -> bool:
    """Whether every budget is 0 (no attack can move): on the host for a float ``value``,
    else from the (B,) ``budget`` (one device sync)."""
    if not isinstance(value, torch.Tensor):
        return value == 0
    return not bool((budget > 0).any())


def broadcast(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 -> (B, 1, ..., 1) in x's dtype, to broadcast against x."""
    return values.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class AttackParams(ComponentParams):
    """Params every attack has: the distance measure of its budget."""

    norm: Norm = Field("linf", description="distance of the budget: linf or l2, in pixel units")


class Attack:
    """Base of a registered attack: ``attack(model, x, y, eps) -> x_adv`` on inputs in [0, 1].

    Subclasses set ``Params`` and write ``perturb``; ``per_sample_eps`` says whether
    ``perturb`` takes a per-sample eps (else the base calls it once per distinct value).
    """

    Params: ClassVar[type[AttackParams]]
    per_sample_eps: ClassVar[bool] = True

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    @property
    def norm(self) -> Norm:
        return self.params.norm

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float | torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, ...) inputs in [0, 1], (B,) labels, a float or (B,) budget -> (B, ...) x_adv.

        ``generator`` (on x's device) draws the attack's randomness (random starts);
        without one, torch's global generator does.
        """
        x = x.detach()
        budget = per_sample(eps, x)  # (B,) float64
        attacked = budget > 0  # (B,)
        if not bool(attacked.any()):  # every ball is the point x: nothing can move
            return x.clone()
        with eval_mode(model):
            if self.per_sample_eps:
                x_adv = self.perturb(model, x, y, budget, generator)
            else:
                x_adv = x.clone()
                for value in torch.unique(budget[attacked]).tolist():
                    rows = budget == value
                    x_adv[rows] = self.perturb(model, x[rows], y[rows], budget[rows], generator).to(
                        x.dtype
                    )
        keep = attacked.view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        x_adv = torch.where(keep, x_adv.detach(), x)  # eps = 0 rows are x itself
        return x_adv.clamp(0.0, 1.0)

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The attack's mathematics: eps is (B,) float64 (one value if not per_sample_eps)."""
        raise NotImplementedError
