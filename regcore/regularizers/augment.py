"""Standard CIFAR augmentation (as in He et al. 2016, https://arxiv.org/abs/1512.03385):
a random crop of the zero-padded image and a random horizontal flip, per sample.

Per sample, a shift (dy, dx) uniform in {-padding, ..., padding}^2 and, with ``flip``, a
fair coin:

    shifted[i, j] = x[i + dy, j + dx]   (0 outside the image)
    out[i, j]     = shifted[i, W - 1 - j] if flipped else shifted[i, j]

which is torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``, with the
padding black (0 in pixel space). Flips do not preserve every label (digits, text): set
``flip: false`` there.

Vectorized on the batch's device: the batch is padded once and every crop, flipped or
not, is one ``gather`` of per-sample pixel indices; no loop over samples. Shifts and
coins come from the device's global torch generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, ComponentParams
from regcore.regularizers.base import Regularizer
from regcore.regularizers.cutout import require_images


class AugmentParams(ComponentParams):
    padding: int = Field(4, ge=0, le=MAX_COUNT, description="largest shift in pixels (CIFAR: 4)")
    flip: bool = Field(True, description="random horizontal flips; off for digits")


def shift_and_flip(
    inputs: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    """(B, C, H, W) images, (B, 2) integer shifts (dy, dx) in [-padding, padding], (B,) bool
    flips -> out[b, :, i, j] = x[b, :, i + dy, j' + dx] with j' = W - 1 - j if flipped
    else j, and 0 where that falls outside the image. Shifts beyond padding are clamped."""
    require_images(inputs, "augment")
    batch, channels, height, width = inputs.shape
    padded = F.pad(inputs, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    padded_width = width + 2 * padding
    device = inputs.device
    # top-left corner of each crop in `padded`; clamped (no host sync to check the range)
    start = (shifts.to(device) + padding).clamp(0, 2 * padding)  # (B, 2)
    rows = torch.arange(height, device=device) + start[:, :1]  # (B, H)
    cols = torch.arange(width, device=device)  # (W,)
    cols = torch.where(flips.to(device)[:, None], cols.flip(0), cols) + start[:, 1:]  # (B, W)
    index = rows[:, :, None] * padded_width + cols[:, None, :]  # (B, H, W) into the flat plane
    index = index.view(batch, 1, height * width).expand(batch, channels, height * width)
    out = padded.flatten(2).gather(2, index)  # (B, C, H*W)
    return out.view(batch, channels, height, width)


@REGULARIZERS.register("augment")
class Augment(Regularizer):
    """Standard CIFAR augmentation: random crop of the zero-padded image and random flip."""

    Params = AugmentParams
    params: AugmentParams

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        if len(info.input_shape) != 3:  # fail before training, not at the first batch
            raise ValueError(f"augment needs image inputs (C, H, W), got {info.input_shape}")
        return model

    def transform_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        require_images(inputs, "augment")
        p = self.params
        if p.padding == 0 and not p.flip:
            return inputs, targets
        batch, device = inputs.shape[0], inputs.device
        shifts = torch.randint(-p.padding, p.padding + 1, (batch, 2), device=device)  # (B, 2)
        if p.flip:
            flips = torch.randint(0, 2, (batch,), device=device, dtype=torch.bool)  # (B,)
        else:
            flips = torch.zeros(batch, dtype=torch.bool, device=device)
        return shift_and_flip(inputs, shifts, flips, p.padding), targets
