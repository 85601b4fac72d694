"""Models: one module each, registered in ``regcore.registries.MODELS``.

A model's target is ``build(params, info: DataInfo) -> nn.Module``; every model takes
inputs in [0, 1], normalizes inside, and returns logits (B, num_classes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from regcore.data.base import DataInfo
from regcore.registries import MODELS

if TYPE_CHECKING:
    from regcore.spec import ModelSpec


def create_model(spec: ModelSpec, info: DataInfo) -> nn.Module:
    return MODELS.get(spec.name).target(spec.params, info)


__all__ = ["create_model"]
