"""AutoAttack (Croce & Hein 2020, https://arxiv.org/abs/2003.01690): the strong evaluation.

A thin wrapper around ``pyautoattack.AutoAttack``, an ensemble of parameter-free attacks
run one after the other on the samples still classified correctly: APGD-CE (APGD on the
cross-entropy with a step-size schedule), APGD-T (targeted, on the DLR loss), FAB-T
(minimal-norm, targeted) and Square (score-based, gradient-free).

Distance: Linf or L2, in pixel units on inputs in [0, 1] (the model returns logits and
normalizes inside). Arguments: ``norm`` linf (default) or l2; ``version`` "standard"
(the four attacks above), "rand" (APGD-CE and APGD-DLR with 20-fold EOT, for randomized
defenses) or "custom" with an ``attacks`` list (e.g. ["apgd-ce"]); ``seed`` 0. Usual
budgets: MNIST Linf 0.3, CIFAR Linf 8/255, CIFAR L2 0.5. AutoAttack takes one eps per
call, so a per-sample eps runs once per distinct value. Shapes: x (B, ...) in [0, 1],
y (B,) -> x' (B, ...); a sample no attack fooled comes back as x. Example:

    attack = ATTACKS.build("autoattack", {"version": "custom", "attacks": ["apgd-ce"]})
    x_adv = attack(model, x, y, 8 / 255)

The wrapper runs quietly (``verbose`` off) on x's device, seeds AutoAttack with
``seed`` inside ``torch.random.fork_rng`` so torch's global generator is left as it was,
caps the target classes of APGD-T and FAB-T at the number of classes minus one, and
skips what pyautoattack cannot run (it would crash): the attacks on the DLR loss
with too few classes (APGD-DLR needs 3, APGD-T 4) and Square on inputs that are not
(C, H, W) images (L2: at least 5 x 5).
The parameters are frozen during the attack (FAB calls ``.backward()``, which would
fill their ``.grad``), and since AutoAttack's dynamic-defense check calls
``sys.settrace(None)``, the previous trace function (a coverage tool, a debugger) is
restored after it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Self

import torch
from pydantic import Field, model_validator
from torch import nn

from regcore.attacks.base import Attack, AttackParams
from regcore.registries import ATTACKS
from regcore.registry import MAX_SEED

AutoAttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]
_NORMS = {"linf": "Linf", "l2": "L2"}
# The DLR loss compares the largest logits: APGD-DLR needs 3 classes, its targeted form 4.
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


class AutoAttackParams(AttackParams):
    version: Literal["standard", "rand", "custom"] = Field(
        "standard", description="standard: APGD-CE, APGD-T, FAB-T, Square; custom: `attacks`"
    )
    attacks: list[AutoAttackName] | None = Field(
        None, min_length=1, description="the attacks to run, in order (version custom only)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds AutoAttack's random starts")

    @model_validator(mode="after")
    def _attacks_only_for_custom(self) -> Self:
        if self.version == "custom" and not self.attacks:
            raise ValueError("version 'custom' needs an `attacks` list, e.g. ['apgd-ce']")
        if self.version != "custom" and self.attacks is not None:
            raise ValueError(f"`attacks` is for version 'custom'; {self.version!r} sets its own")
        return self


def _runs_on(attack: str, norm: str, classes: int, x: torch.Tensor) -> bool:
    """Whether pyautoattack can run this attack: the DLR losses need enough classes,
    Square needs (C, H, W) images (L2: at least 5 x 5 pixels)."""
    if classes < _MIN_CLASSES.get(attack, 2):
        return False
    if attack == "square":
        return x.dim() == 4 and (norm == "linf" or min(x.shape[2:]) >= 5)
    return True


@contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Leave torch's generators, the parameters' grads and the trace function as they were.

    FAB calls ``.backward()``, which would accumulate into the parameters' ``.grad``:
    they are frozen during the attack instead.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    trace = sys.gettrace()
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.random.fork_rng(devices=devices):
            for parameter in frozen:
                parameter.requires_grad_(False)
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        sys.settrace(trace)


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (APGD-CE, APGD-T, FAB-T, Square) from pyautoattack, for the strong evaluation."""

    Params = AutoAttackParams
    params: AutoAttackParams
    per_sample_eps = False

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        from pyautoattack import AutoAttack as PyAutoAttack  # heavy: only when attacking

        p = self.params
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        with _isolated(model):
            adversary = PyAutoAttack(
                model, norm=_NORMS[p.norm], eps=float(eps[0]), version=p.version,
                attacks=p.attacks, seed=p.seed, device=x.device,
            )  # fmt: skip
            adversary.verbose = False
            runnable = [a for a in adversary.attacks_to_run if _runs_on(a, p.norm, classes, x)]
            if not runnable:
                raise ValueError(
                    f"autoattack: none of {adversary.attacks_to_run} works with {classes} "
                    f"classes on inputs of shape {tuple(x.shape[1:])}"
                )
            adversary.attacks_to_run = runnable
            targets = max(1, min(adversary.apgd_targeted.n_target_classes, classes - 1))
            adversary.apgd_targeted.n_target_classes = targets
            adversary.fab.n_target_classes = targets
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        return x_adv.to(x.dtype)
