"""Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): train on convex combinations
of pairs of examples and of their labels.

Per training batch, lam ~ Beta(alpha, alpha) and a random permutation pi of the batch:

    x~ = lam * x + (1 - lam) * x[pi]
    loss = lam * CE(f(x~), y) + (1 - lam) * CE(f(x~), y[pi])

(the loss form of the paper's code, equal to the cross-entropy against the mixed one-hot
labels). ``transform_batch`` returns (x~, y), so the loop's data loss is CE(f(x~), y); the
penalty is ``(1 - lam) * (CE(f(x~), y[pi]) - CE(f(x~), y))``, so data_loss + term is the
mixup loss exactly, and reg/mixup logs how far the mixed-in labels are from being fitted.
train/accuracy is measured against y, the label of the larger share only when lam > 1/2.

lam and pi come from torch's global generators (lam from the CPU one, pi from the
device's), which the loop seeds and checkpoints. Batch transforms run in spec order:
list mixup after augment and cutout so the mixed images are the augmented ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class MixupParams(ComponentParams):
    alpha: float = Field(
        0.2,
        gt=0,
        le=MAX_FLOAT,
        description="lam ~ Beta(alpha, alpha); the paper uses 0.1-0.4 on ImageNet",
    )


@REGULARIZERS.register("mixup")
class Mixup(Regularizer):
    """Mixup (Zhang et al. 2018): train on convex combinations of example pairs and labels."""

    Params = MixupParams
    params: MixupParams

    def __init__(self, params: MixupParams) -> None:
        super().__init__(params)
        # The pairing of the current step, kept from transform_batch until the next one;
        # public for inspection and tests.
        self.last_lam: float | None = None
        self.last_perm: torch.Tensor | None = None  # (B,) on the batch's device
        self._targets_b: torch.Tensor | None = None  # (B,) y[pi]
        self._beta: torch.distributions.Beta | None = None

    def sample_lam(self) -> float:
        """One draw of Beta(alpha, alpha) from torch's global CPU generator (a host float,
        so no device sync)."""
        if self._beta is None:  # built once: constructing it costs ~3x a draw
            alpha = torch.tensor(self.params.alpha, dtype=torch.float64)
            self._beta = torch.distributions.Beta(alpha, alpha)
        return float(self._beta.sample())

    def transform_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.sample_lam()
        perm = torch.randperm(inputs.shape[0], device=inputs.device)  # (B,)
        # lam * x + (1 - lam) * x[perm], bit for bit, with two buffers instead of four
        mixed = inputs[perm].mul_(1.0 - lam).add_(lam * inputs)  # (B, ...)
        self.last_lam, self.last_perm, self._targets_b = lam, perm, targets[perm]
        return mixed, targets

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if self.last_lam is None or self._targets_b is None:
            raise RuntimeError("mixup: penalty() needs transform_batch() on this step first")
        if self._targets_b.shape != ctx.targets.shape:
            raise RuntimeError(
                f"mixup: the batch has {ctx.targets.shape[0]} targets but the last "
                f"transform_batch() paired {self._targets_b.shape[0]}"
            )
        loss_b = F.cross_entropy(ctx.logits, self._targets_b)
        return (1.0 - self.last_lam) * (loss_b - ctx.data_loss)
