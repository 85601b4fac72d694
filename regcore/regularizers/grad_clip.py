"""Gradient clipping (Pascanu, Mikolov & Bengio 2013, https://arxiv.org/abs/1211.5063).

``mode: norm`` rescales all gradients together when their global norm is too large,

    g <- g * min(1, max_norm / (||g||_p + 1e-6)),   ||g||_p over every parameter at once

(``torch.nn.utils.clip_grad_norm_``): the direction of the update is kept, gradients
already inside the ball are untouched. ``mode: value`` clamps every entry to
[-max_value, max_value] (``clip_grad_value_``), which changes the direction.

No term is added to the loss. Where it acts in the loop (``regcore.train``): after
``loss.backward()`` every regularizer's ``after_backward`` runs first (weight noise has
restored the clean weights; the gradient taken at the noisy point remains), then the
``before_step`` hooks in spec order, this one among them, then ``optimizer.step()``. So
the clipped gradient is that of the whole objective, data loss plus every penalty.
Decoupled L2 (``l2`` with ``mode: decoupled``) shrinks weights, not gradients, in its
``before_step``, so its order relative to this one does not matter; the optimizer's own
``training.weight_decay`` is added inside ``optimizer.step()``, after clipping.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer


class GradClipParams(ComponentParams):
    mode: Literal["norm", "value"] = "norm"
    max_norm: float = Field(
        1.0, gt=0, le=MAX_FLOAT, description="norm mode: the largest global gradient norm"
    )
    norm_type: Annotated[float, Field(gt=0, le=MAX_FLOAT)] | Literal["inf"] = Field(
        2.0, description='norm mode: p of the global p-norm ("inf": the largest entry)'
    )
    max_value: float = Field(
        1.0,
        gt=0,
        le=MAX_FLOAT,
        description="value mode: each entry is clamped to [-max_value, max_value]",
    )


@REGULARIZERS.register("grad_clip")
class GradClip(Regularizer):
    """Gradient clipping: cap the global gradient norm (or each entry) before the step."""

    Params = GradClipParams
    params: GradClipParams

    def __init__(self, params: GradClipParams) -> None:
        super().__init__(params)
        self.last_norm: torch.Tensor | None = None  # norm mode: the global norm before clipping

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        p = self.params
        parameters = [q for q in model.parameters() if q.grad is not None]
        if not parameters:
            return
        if p.mode == "value":
            nn.utils.clip_grad_value_(parameters, p.max_value)
        else:  # a tensor on the device: reading it would cost a host sync every step
            norm_type = math.inf if p.norm_type == "inf" else p.norm_type
            self.last_norm = nn.utils.clip_grad_norm_(parameters, p.max_norm, norm_type)
