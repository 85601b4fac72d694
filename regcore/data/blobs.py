"""Four Gaussian blobs in the unit square: the 2-D toy problem (decision boundaries you can plot).

Cluster k is centred at ``CENTRES[k]`` (the four points (0.25 | 0.75, 0.25 | 0.75)) and its
label is k. Points are drawn with a fixed generator (``data_seed``), balanced across the
four classes, so every run sees the same data; the train/validation split follows the
run seed through ``make_splits``. With ``clip`` (the default) points are clipped to
[0, 1] like every other dataset's inputs; without it they may fall slightly outside.

``DataInfo.mean/std`` are the population values of the unclipped mixture, not sample
statistics: mean 0.5 and std sqrt(0.25^2 + noise^2) per coordinate (clipping shrinks
the true std slightly), so they depend only on ``noise``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from regcore.data.base import DataInfo, DataSplits, SplitParams, make_splits
from regcore.registries import DATASETS
from regcore.registry import MAX_FLOAT, MAX_SAMPLES, MAX_SEED

CENTRES = torch.tensor([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]])  # (4, 2)


class BlobsParams(SplitParams):
    n_train: int = Field(
        2000, ge=4, le=MAX_SAMPLES, description="training points (before the validation split)"
    )
    n_test: int = Field(1000, ge=4, le=MAX_SAMPLES, description="test points")
    noise: float = Field(0.1, ge=0, le=MAX_FLOAT, description="std of each cluster, per coordinate")
    clip: bool = Field(True, description="clip points to [0, 1]")
    data_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of the points (not of the split)"
    )


def _sample(
    n: int, params: BlobsParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n points with balanced labels in random order."""
    y = (torch.arange(n) % len(CENTRES))[torch.randperm(n, generator=generator)]  # (n,)
    x = CENTRES[y] + params.noise * torch.randn(n, 2, generator=generator)  # (n, 2)
    if params.clip:
        x = x.clamp_(0, 1)
    return x, y.to(torch.int64)


@DATASETS.register("blobs", params=BlobsParams)
def load(params: BlobsParams, seed: int) -> DataSplits:
    """Four Gaussian clusters in the unit square (2-D inputs, 4 classes); a toy problem."""
    generator = torch.Generator().manual_seed(params.data_seed)
    train_x, train_y = _sample(params.n_train, params, generator)
    test_x, test_y = _sample(params.n_test, params, generator)
    std = math.sqrt(0.25**2 + params.noise**2)  # centres sit +-0.25 from 0.5 on each axis
    info = DataInfo(
        input_shape=(2,),
        num_classes=len(CENTRES),
        mean=(0.5, 0.5),
        std=(std, std),
        class_names=tuple(f"({cx:g}, {cy:g})" for cx, cy in CENTRES.tolist()),
    )
    return make_splits(train_x, train_y, test_x, test_y, params, seed, info)
