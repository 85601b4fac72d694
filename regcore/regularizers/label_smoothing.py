"""Label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567).

The loss becomes the cross-entropy against smoothed targets q'. ``standard``:
q'_k = (1 - eps) 1[k=y] + eps/K, as PyTorch's ``label_smoothing``. ``study`` (kept only
to compare with the study's tables): q'_y = 1 - eps, q'_k = eps/(K-1) elsewhere.

Logged as its own term: reg/label_smoothing = CE(q', p) - CE(y, p), so data loss plus
this term is exactly the smoothed loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import ComponentParams
from regcore.regularizers.base import Regularizer, StepContext


class LabelSmoothingParams(ComponentParams):
    eps: float = Field(0.1, gt=0, lt=1)
    variant: Literal["standard", "study"] = "standard"


def smoothed_targets(
    targets: torch.Tensor, num_classes: int, eps: float, variant: str, dtype: torch.dtype
) -> torch.Tensor:
    """(B,) labels -> (B, K) target distributions."""
    one_hot = F.one_hot(targets, num_classes).to(dtype)  # (B, K)
    if variant == "standard":
        return (1 - eps) * one_hot + eps / num_classes
    return (1 - eps) * one_hot + eps / (num_classes - 1) * (1 - one_hot)


@REGULARIZERS.register("label_smoothing")
class LabelSmoothing(Regularizer):
    Params = LabelSmoothingParams
    params: LabelSmoothingParams

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        num_classes = ctx.logits.shape[1]
        log_p = F.log_softmax(ctx.logits, dim=1)  # (B, K)
        q = smoothed_targets(
            ctx.targets, num_classes, self.params.eps, self.params.variant, log_p.dtype
        )
        smoothed_loss = -(q * log_p).sum(dim=1).mean()
        return smoothed_loss - ctx.data_loss
