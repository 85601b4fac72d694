"""Adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083): train on PGD
examples, optionally mixed with the clean batch.

    loss = (1 - mix) * CE(f(x), y) + mix * CE(f(x_adv), y),  x_adv = PGD(x; eps, norm, steps)

``mix = 1`` is Madry's min-max objective; ``mix = 0.5`` is Goodfellow et al.'s (2015)
clean/adversarial mixture. Implemented as a penalty so the loop is untouched: the term
is ``mix * (CE_adv - CE_clean)``, so data_loss + term is the objective above exactly,
and reg/adversarial_training logs the (weighted) robustness gap.

Defaults follow Madry et al.'s CIFAR-10 recipe, the usual budget for natural images:
Linf eps = 8/255 with 7 steps (their step 2/255; here alpha defaults to
2.5 * eps / steps = 2.86/255). Their MNIST recipe is eps = 0.3, 40 steps, alpha = 0.01;
a typical CIFAR-10 L2 budget is eps = 0.5.

The attack runs with the model in eval mode (as most implementations do): dropout is
off and batch norm uses its running statistics while x_adv is searched, so the attack
is deterministic given its random start. CE_adv is then computed in the model's own
(training) mode: a fresh dropout mask, and batch norm normalizes and updates its
running statistics with the adversarial batch as well as the clean one. The clean
forward is still made by the loop (it feeds train/accuracy and, for mix < 1, the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.attacks.pgd import Norm, pgd
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class AdversarialTrainingParams(ComponentParams):
    eps: float = Field(
        8 / 255, ge=0, le=MAX_FLOAT, description="attack budget in pixel units (MNIST: 0.3)"
    )
    norm: Norm = "linf"
    steps: int = Field(7, ge=1, le=MAX_COUNT, description="PGD steps per training batch")
    alpha: float | None = Field(
        None, gt=0, le=MAX_FLOAT, description="PGD step size; none: 2.5 * eps / steps"
    )
    random_start: bool = True
    mix: float = Field(
        1.0, ge=0, le=1, description="share of the loss on adversarial examples; 1: pure Madry"
    )


@REGULARIZERS.register("adversarial_training")
class AdversarialTraining(Regularizer):
    Params = AdversarialTrainingParams
    params: AdversarialTrainingParams
    autocast_safe = True  # PGD and CE_adv in bf16: first-order, checked in test_gpu_options
    stack_note = "stacked seeds run its attack and adversarial forward member by member"

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        p = self.params
        if p.mix == 0:  # pure clean training: skip the attack
            return ctx.data_loss.new_zeros(())
        x_adv = pgd(
            ctx.model, ctx.inputs.detach(), ctx.targets,
            eps=p.eps, norm=p.norm, steps=p.steps, alpha=p.alpha, random_start=p.random_start,
        )  # fmt: skip
        logits_adv = ctx.model(x_adv)  # (B, C), in the model's training mode
        adversarial_loss = F.cross_entropy(logits_adv, ctx.targets)
        return p.mix * (adversarial_loss - ctx.data_loss)
