"""Confidence penalty (Pereyra et al. 2017, https://arxiv.org/abs/1701.06548).

L = CE - beta * H(p) with H(p) = -sum_k p_k log p_k: over-confident (LOW-entropy)
predictions are penalized, so minimizing L raises the entropy. (The study added
+beta * H: the wrong sign, which rewards over-confidence.) The hinge variant penalizes
only entropies below a threshold Gamma: + beta * mean_b max(0, Gamma - H_b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, MAX_WEIGHT, ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class ConfidencePenaltyParams(ComponentParams):
    beta: float = Field(0.1, ge=0, le=MAX_WEIGHT)
    hinge_threshold: float | None = Field(
        None,
        ge=0,
        le=MAX_FLOAT,
        description="Gamma of the hinge variant (nats); none: the plain penalty",
    )


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B,) entropies of softmax(logits), in nats."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@REGULARIZERS.register("confidence_penalty")
class ConfidencePenalty(Regularizer):
    Params = ConfidencePenaltyParams
    params: ConfidencePenaltyParams

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        h = entropy(ctx.logits)  # (B,)
        if self.params.hinge_threshold is None:
            return -self.params.beta * h.mean()
        return self.params.beta * F.relu(self.params.hinge_threshold - h).mean()
