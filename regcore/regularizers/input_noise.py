"""Gaussian noise on the inputs (Bishop 1995): x + N(0, sigma^2 I), training batches only.

Evaluation, attacks and analyses always see clean inputs.
"""

from __future__ import annotations

import torch
from pydantic import Field

from regcore.registries import REGULARIZERS
from regcore.registry import MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer


class InputNoiseParams(ComponentParams):
    sigma: float = Field(0.1, gt=0, le=MAX_FLOAT, description="noise std in pixel units")
    clamp: bool = Field(True, description="clamp noisy inputs back into [0, 1]")


@REGULARIZERS.register("input_noise")
class InputNoise(Regularizer):
    Params = InputNoiseParams
    params: InputNoiseParams

    def transform_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # drawn in logical order: channels-last inputs get the same noise as contiguous ones
        noise = torch.randn_like(inputs, memory_format=torch.contiguous_format)  # (B, ...)
        # inputs + sigma * noise with two buffers instead of four (scaled and clamped in
        # place); the sum takes the inputs' memory format
        noisy = inputs + noise.mul_(self.params.sigma)
        return (noisy.clamp_(0.0, 1.0) if self.params.clamp else noisy), targets
