"""Cutout (DeVries & Taylor 2017, https://arxiv.org/abs/1708.04552): blank out one square
of each training image.

Per sample, a centre (cy, cx) is drawn uniformly over the image's pixels and the square
rows [cy - size//2, cy - size//2 + size) x the same columns is set to ``fill`` on every
channel. The square is clipped at the borders, so near an edge only part of it falls on
the image: the paper lets the centre fall anywhere so that partial squares occur (its
code clips the same way). ``probability`` is the chance that a sample is cut at all (1 in
the paper). The paper's sizes: 16 px on CIFAR-10, 8 on CIFAR-100, 20 on SVHN.

``fill`` is in pixel space (models normalize inside). The paper's code cuts the
normalized image, i.e. fills with the per-channel dataset mean, so the default
``fill: mean`` does that (the mean comes from the dataset's DataInfo at setup); a number
such as 0 (black) fills with that pixel value instead.

Vectorized: the mask is built from the per-sample centres by broadcasting, no loop over
samples. Centres come from the device's global torch generator.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from regcore.data.base import DataInfo
from regcore.registries import REGULARIZERS
from regcore.registry import MAX_COUNT, MAX_FLOAT, ComponentParams
from regcore.regularizers.base import Regularizer


class CutoutParams(ComponentParams):
    size: int = Field(
        8, ge=1, le=MAX_COUNT, description="side of the square in pixels (CIFAR-10: 16)"
    )
    fill: Annotated[float, Field(ge=-MAX_FLOAT, le=MAX_FLOAT)] | Literal["mean"] = Field(
        "mean", description="'mean': the dataset's channel means (the paper's); or a pixel value"
    )
    probability: float = Field(1.0, ge=0, le=1, description="chance that a sample is cut")


def require_images(inputs: torch.Tensor, what: str) -> None:
    if inputs.ndim != 4:
        raise ValueError(
            f"{what} needs image batches (B, C, H, W), got shape {tuple(inputs.shape)}"
        )


def cutout_mask(centres: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(B, 2) integer centres (row, column) -> (B, H, W) bool, True inside each sample's
    square [c - size//2, c - size//2 + size) on both axes, clipped to the image."""
    start = centres - size // 2  # (B, 2)
    rows = torch.arange(height, device=centres.device)  # (H,)
    cols = torch.arange(width, device=centres.device)  # (W,)
    in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)  # (B, H)
    in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size)  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)


def apply_cutout(
    inputs: torch.Tensor,
    centres: torch.Tensor,
    size: int,
    fill: float | torch.Tensor,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill each sample's square (``cutout_mask``) with ``fill`` (a number, or a (C,) tensor
    of per-channel values); samples with ``active`` (B,) False are left alone."""
    require_images(inputs, "cutout")
    mask = cutout_mask(centres, size, inputs.shape[2], inputs.shape[3])  # (B, H, W)
    if active is not None:
        mask = mask & active[:, None, None]
    if isinstance(fill, torch.Tensor):
        fill = fill.to(inputs)[None, :, None, None]  # (1, C, 1, 1)
    else:
        fill = torch.tensor(fill, dtype=inputs.dtype, device=inputs.device)
    return torch.where(mask[:, None], fill, inputs)  # (B, C, H, W)


@REGULARIZERS.register("cutout")
class Cutout(Regularizer):
    """Cutout (DeVries & Taylor 2017): blank out a random square of each training image."""

    Params = CutoutParams
    params: CutoutParams

    def __init__(self, params: CutoutParams) -> None:
        super().__init__(params)
        self._channel_means: tuple[float, ...] | None = None
        self._means_on_device: torch.Tensor | None = None  # (C,) the 'mean' fill, cached

    def setup(self, model: nn.Module, info: DataInfo) -> nn.Module:
        if len(info.input_shape) != 3:  # fail before training, not at the first batch
            raise ValueError(f"cutout needs image inputs (C, H, W), got {info.input_shape}")
        self._channel_means = info.mean
        return model

    def transform_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        require_images(inputs, "cutout")
        p = self.params
        if p.probability == 0:
            return inputs, targets
        batch, channels, height, width = inputs.shape
        device = inputs.device
        centres = torch.stack(
            [
                torch.randint(0, height, (batch,), device=device),
                torch.randint(0, width, (batch,), device=device),
            ],
            dim=1,
        )  # (B, 2)
        active = torch.rand(batch, device=device) < p.probability if p.probability < 1 else None
        fill = self._fill(channels, inputs)
        return apply_cutout(inputs, centres, p.size, fill, active), targets

    def _fill(self, channels: int, like: torch.Tensor) -> float | torch.Tensor:
        """The fill value: a number, or the (C,) channel means in ``like``'s dtype and on its
        device, built once and reused (no host-to-device copy per batch)."""
        if self.params.fill != "mean":
            return float(self.params.fill)
        if self._channel_means is None:
            raise RuntimeError("cutout: fill 'mean' needs setup() to learn the dataset's means")
        cached = self._means_on_device
        if cached is None or (cached.device, cached.dtype, cached.numel()) != (
            like.device, like.dtype, channels,
        ):  # fmt: skip
            means = torch.tensor(self._channel_means)  # (C,) or (1,) for a grey dataset
            means = means.expand(channels) if means.numel() == 1 else means
            cached = self._means_on_device = means.to(like)  # (C,)
        return cached
